//! NetworkPolicy backends: how compiled policy (one rule set per local pod
//! and direction, from [`strait_model::policy`]) reaches the datapath. One
//! per datapath behind [`PolicyBackend`]: `nftables` (the kernel datapath)
//! and `ebpf` (maps the tc programs read).

pub mod ebpf;
pub mod nftables;

pub use strait_model::policy::PodRules;

pub trait PolicyBackend: Send {
    fn name(&self) -> &'static str;
    /// Make the datapath enforce exactly `pods`. Blocking. Returns how many
    /// datapath changes were made (0: nothing to do).
    fn apply(&mut self, pods: &[PodRules]) -> anyhow::Result<usize>;
}

pub fn for_datapath(
    mode: strait_model::lab::Mode,
    pin_dir: Option<&std::path::Path>,
) -> anyhow::Result<Box<dyn PolicyBackend>> {
    Ok(match mode {
        strait_model::lab::Mode::Routed => Box::new(nftables::NftPolicy::default()),
        strait_model::lab::Mode::Ebpf => Box::new(ebpf::EbpfPolicy::new(
            pin_dir
                .ok_or_else(|| {
                    anyhow::anyhow!("eBPF policy needs the eBPF datapath's pin directory")
                })?
                .to_path_buf(),
        )),
    })
}
