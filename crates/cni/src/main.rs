//! `strait-cni`: the binary a container runtime executes.

use std::io::Read;
use strait_cni::env::CniEnv;
use strait_cni::plugin;
use strait_cni::types::{CniError, ErrorCode};

fn main() {
    let mut timer = plugin::PhaseTimer::new();
    let mut stdin = vec![];
    let read = std::io::stdin().read_to_end(&mut stdin);
    // Errors are reported in the configuration's cniVersion when it can be read.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "1.0.0".into());
    let outcome = read
        .map_err(|e| CniError::new(ErrorCode::IoFailure, format!("reading stdin: {e}")))
        .and_then(|_| CniEnv::from_process_env())
        .and_then(|env| plugin::run(&env, &stdin));
    timer.mark("whole verb");
    match outcome {
        Ok(serde_json::Value::Null) => {}
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", e.to_json(&version));
            eprintln!("strait-cni: {}", e.msg);
            std::process::exit(1);
        }
    }
}
