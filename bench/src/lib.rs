//! Shared pieces of strait's benchmark programs.

/// The machine a benchmark ran on, for its report: kernel, CPU count and
/// model.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = strait_lab::cmd::run("uname", &["-r"]).unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("kernel {}, {cpus} CPUs ({cpu})", kernel.trim())
}
