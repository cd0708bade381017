//! Service backends: how the service table reaches the datapath. One per
//! backend behind [`ServiceBackend`], chosen by name: `ebpf` (maps read by
//! the tc and socket programs) or `nftables` (a table of verdict maps).

pub mod ebpf;
pub mod nftables;

use strait_model::services::ServiceTable;

pub trait ServiceBackend: Send {
    /// The backend's name, as in `strait status`.
    fn name(&self) -> &'static str;
    /// Make the datapath hold exactly `table`. Blocking (map syscalls, nft):
    /// the caller keeps it off the async reactor. Returns how many datapath
    /// entries changed (0: nothing to do).
    fn apply(&mut self, table: &ServiceTable) -> anyhow::Result<usize>;
}

pub const BACKENDS: &[&str] = &["ebpf", "nftables"];

pub fn by_name(
    name: &str,
    pin_dir: Option<&std::path::Path>,
    service_cidr: Option<ipnet::IpNet>,
) -> anyhow::Result<Box<dyn ServiceBackend>> {
    match name {
        "ebpf" => {
            let dir = pin_dir.ok_or_else(|| {
                anyhow::anyhow!(
                    "the ebpf service backend needs the eBPF datapath (--datapath ebpf)"
                )
            })?;
            Ok(Box::new(ebpf::EbpfServices::new(dir.to_path_buf())))
        }
        "nftables" => Ok(Box::new(nftables::NftServices::new(service_cidr))),
        other => anyhow::bail!(
            "service backend {other:?} is not one strait has; choose one of {}",
            BACKENDS.join(", ")
        ),
    }
}
