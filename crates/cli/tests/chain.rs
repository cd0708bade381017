//! strait as the first plugin of a conflist, with the reference tuning,
//! bandwidth and portmap plugins after it (prevResult passed as libcni does).

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;

const REF: &str = "/usr/lib/cni";

fn plugin_conf(list: &Value, i: usize, prev: Option<&Value>) -> Value {
    let mut c = list["plugins"][i].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c["name"] = list["name"].clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

#[test]
fn portmap_bandwidth_tuning_chained_after_strait() {
    if !require_root("portmap_bandwidth_tuning_chained_after_strait") {
        return;
    }
    assert!(
        Path::new(REF).join("portmap").exists(),
        "install containernetworking-plugins (the README's setup does)"
    );
    let lab = Lab::up(&lab_yaml("t-chain", &["n1", "n2"], 24, &[]));
    let ns = lab.pod_netns("web");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "strait-chain",
        "plugins": [
            {"type": "strait-cni", "agentSocket": lab.st.socket(lab.node("n1")), "mtu": 1500},
            {"type": "tuning", "sysctl": {"net.ipv4.tcp_keepalive_time": "123"}},
            {"type": "bandwidth", "ingressRate": 100000000, "ingressBurst": 1000000, "egressRate": 100000000, "egressBurst": 1000000},
            {"type": "portmap", "capabilities": {"portMappings": true},
             "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}}
        ]
    });
    let bin = |i: usize| -> std::path::PathBuf {
        match list["plugins"][i]["type"].as_str().unwrap() {
            "strait-cni" => lab.bins.cni.clone(),
            t => Path::new(REF).join(t),
        }
    };
    let env = cni_env("ADD", "chain1", &ns, "web");
    let mut prev: Option<Value> = None;
    for i in 0..4 {
        let out = cni_raw(
            &bin(i),
            &lab.node("n1").netns,
            &as_refs(&env),
            plugin_conf(&list, i, prev.as_ref()).to_string().as_bytes(),
        );
        assert!(out.ok, "ADD plugin {i}: {} {}", out.json, out.stderr);
        prev = Some(out.json);
    }
    let result = prev.unwrap();
    assert_eq!(
        result["ips"][0]["address"], "198.19.0.1/32",
        "strait's result survives the chain: {result}"
    );

    // tuning wrote its sysctl inside the pod; bandwidth shaped the host veth.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "cat",
            "/proc/sys/net/ipv4/tcp_keepalive_time",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "123");
    let host = strait_model::naming::host_veth_name("chain1", "eth0");
    let qd = lab.exec("n1", &["tc", "qdisc", "show", "dev", &host]);
    assert!(qd.contains("tbf"), "{qd}");

    // portmap: n2 reaches the pod through n1's host port.
    let echo = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&lab.bins.strait)
        .args(["lab", "serve-echo", "--name", "web"])
        .spawn()
        .unwrap();
    let _kill = scopeguard(echo);
    let n2 = strait_lab::run::netns_path(&lab.node("n2").netns);
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(r) = strait_lab::probe::probe(
            &n2,
            "198.18.0.1:18080".parse().unwrap(),
            false,
            std::time::Duration::from_millis(500),
        ) {
            answer = Some(r.answered_by);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        answer.as_deref(),
        Some("web"),
        "hostPort 18080 on n1 reaches the pod"
    );

    // DEL runs the chain in reverse, each plugin with the cached result.
    let env = cni_env("DEL", "chain1", &ns, "web");
    for i in (0..4).rev() {
        let out = cni_raw(
            &bin(i),
            &lab.node("n1").netns,
            &as_refs(&env),
            plugin_conf(&list, i, Some(&result)).to_string().as_bytes(),
        );
        assert!(out.ok, "DEL plugin {i}: {} {}", out.json, out.stderr);
    }
    assert!(lab.host_veths("n1").is_empty());
    assert!(lab.status("n1").allocations.is_empty());
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn scopeguard(c: std::process::Child) -> KillOnDrop {
    KillOnDrop(c)
}
