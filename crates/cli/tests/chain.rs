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

/// Debian's reference plugins speak CNI up to 1.0.0, as containerd 1.6 and
/// podman 4.3 do; strait is tested in the chain at 0.4.0 and 1.0.0.
#[test]
fn chain_at_cni_0_4_0() {
    if !require_root("chain_at_cni_0_4_0") {
        return;
    }
    chain("0.4.0", "t-chain04", 18081, "routed");
}

#[test]
fn chain_at_cni_1_0_0() {
    if !require_root("chain_at_cni_1_0_0") {
        return;
    }
    chain("1.0.0", "t-chain10", 18080, "routed");
}

/// In the eBPF datapath a pod's reply to a hostPort connection would be
/// fast-pathed out, skipping the host NAT that must translate it back:
/// strait declares portMappings too, and hands those replies to the stack.
#[test]
fn chain_with_host_ports_in_the_ebpf_datapath() {
    if !require_root("chain_with_host_ports_in_the_ebpf_datapath") {
        return;
    }
    chain("1.0.0", "t-chainbpf", 18082, "ebpf");
}

/// At 1.1.0 no reference plugin can follow strait (they stop at 1.0.0), so
/// the list is strait alone: ADD, CHECK, STATUS, GC, and DEL twice (with
/// and without prevResult, as runtimes send it).
#[test]
fn strait_alone_at_cni_1_1_0() {
    if !require_root("strait_alone_at_cni_1_1_0") {
        return;
    }
    let lab = Lab::up(&lab_yaml("t-chain11", &["n1"], 24, &[]));
    let ns = lab.pod_netns("p");
    let mut c = json!({"cniVersion": "1.1.0", "name": "strait-11", "type": "strait-cni",
        "agentSocket": lab.st.socket(lab.node("n1")), "mtu": 1500});
    let run = |cmd: &str, conf: &Value| {
        let env = cni_env(cmd, "c11", &ns, "p");
        let env = if matches!(cmd, "STATUS" | "GC") {
            vec![env[0].clone()]
        } else {
            env
        };
        cni_raw(
            &lab.bins.cni,
            &lab.node("n1").netns,
            &as_refs(&env),
            conf.to_string().as_bytes(),
        )
    };
    let add = run("ADD", &c);
    assert!(add.ok, "{} {}", add.json, add.stderr);
    assert_eq!(add.json["cniVersion"], "1.1.0");
    assert!(add.json["ips"][0].get("version").is_none());
    let mut with_prev = c.clone();
    with_prev["prevResult"] = add.json.clone();
    assert!(run("CHECK", &with_prev).ok);
    assert!(run("STATUS", &c).ok);
    c["cni.dev/valid-attachments"] = json!([{"containerID": "c11", "ifname": "eth0"}]);
    assert!(run("GC", &c).ok);
    assert_eq!(
        lab.status("n1").allocations.len(),
        1,
        "GC kept the valid attachment"
    );
    assert!(run("DEL", &with_prev).ok);
    assert!(run("DEL", &c).ok, "second DEL, without prevResult");
    assert!(lab.host_veths("n1").is_empty());
    assert!(lab.status("n1").allocations.is_empty());
}

fn chain(version: &str, lab_name: &str, host_port: u16, mode: &str) {
    assert!(
        Path::new(REF).join("portmap").exists(),
        "install containernetworking-plugins (the README's setup does)"
    );
    let lab = Lab::up(
        &lab_yaml(lab_name, &["n1", "n2"], 24, &[])
            .replace("mode: routed", &format!("mode: {mode}")),
    );
    let ns = lab.pod_netns("web");
    let mappings = json!({"portMappings": [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}]});
    let mut list = json!({
        "cniVersion": version,
        "name": "strait-chain",
        "plugins": [
            {"type": "strait-cni", "agentSocket": lab.st.socket(lab.node("n1")), "mtu": 1500,
             "capabilities": {"portMappings": true}, "runtimeConfig": mappings},
            {"type": "tuning", "sysctl": {"net.ipv4.tcp_keepalive_time": "123"}},
            {"type": "bandwidth", "ingressRate": 100000000, "ingressBurst": 1000000, "egressRate": 100000000, "egressBurst": 1000000},
            {"type": "portmap", "capabilities": {"portMappings": true}, "runtimeConfig": mappings}
        ]
    });
    // The bandwidth plugin adds an `ingress` qdisc to the host veth, where
    // the eBPF datapath's clsact already is: the two cannot share a veth
    // (as with Cilium), so the eBPF chain leaves it out.
    let shaped = mode != "ebpf";
    if !shaped {
        list["plugins"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p["type"] != "bandwidth");
    }
    let n = list["plugins"].as_array().unwrap().len();
    let bin = |i: usize| -> std::path::PathBuf {
        match list["plugins"][i]["type"].as_str().unwrap() {
            "strait-cni" => lab.bins.cni.clone(),
            t => Path::new(REF).join(t),
        }
    };
    let env = cni_env("ADD", "chain1", &ns, "web");
    let mut prev: Option<Value> = None;
    for i in 0..n {
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
    assert_eq!(result["cniVersion"], version);
    // Before 1.0.0 an IP carries its version; from 1.0.0 it must not.
    assert_eq!(
        result["ips"][0].get("version").is_some(),
        version == "0.4.0",
        "{result}"
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
    assert_eq!(qd.contains("tbf"), shaped, "{qd}");

    // portmap: the pod is reached through n1's host port from n1 itself,
    // from another node and from outside the cluster.
    let echo = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&lab.bins.strait)
        .args(["lab", "serve-echo", "--name", "web"])
        .spawn()
        .unwrap();
    let _kill = scopeguard(echo);
    let ext = strait_model::lab::external_netns(lab.name());
    for from in [&lab.node("n1").netns, &lab.node("n2").netns, &ext] {
        let from = strait_lab::run::netns_path(from);
        let mut answer = None;
        for _ in 0..50 {
            if let Ok(r) = strait_lab::probe::probe(
                &from,
                std::net::SocketAddr::from(([198, 18, 0, 1], host_port)),
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
            "{mode}: hostPort {host_port} on n1 reaches the pod from {}",
            from.display()
        );
    }

    // DEL runs the chain in reverse, each plugin with the cached result;
    // runtimes then send DEL again, without prevResult.
    let env = cni_env("DEL", "chain1", &ns, "web");
    for prev in [Some(&result), None] {
        for i in (0..n).rev() {
            let out = cni_raw(
                &bin(i),
                &lab.node("n1").netns,
                &as_refs(&env),
                plugin_conf(&list, i, prev).to_string().as_bytes(),
            );
            assert!(
                out.ok,
                "DEL plugin {i} (prevResult: {}): {} {}",
                prev.is_some(),
                out.json,
                out.stderr
            );
        }
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
