//! Compile every `bpf/*.c` (one file per attach point) with a fixed clang
//! command line into OUT_DIR; the objects are embedded in the binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", root.display());
    for dir in [root.clone(), root.join("lib")] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            println!("cargo:rerun-if-changed={}", e.path().display());
        }
    }
    let clang = std::env::var("STRAIT_CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    for name in [
        "bpf_lxc",
        "bpf_netdev",
        "bpf_sock",
        "bpf_tunnel",
        "bpf_vlan",
    ] {
        let src = root.join(format!("{name}.c"));
        let obj = out.join(format!("{name}.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .arg(format!("-I/usr/include/{arch}"))
            .arg("-I")
            .arg(&root)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {clang} to build the BPF programs ({e}); install clang and libbpf-dev (scripts/setup.sh does)")
            });
        assert!(status.success(), "clang failed on {}", src.display());
    }
}
