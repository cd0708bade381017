//! NetworkPolicy backends: how compiled policy (one rule set per local pod
//! and direction, from [`strait_model::policy`]) reaches the datapath. One
//! per datapath behind [`PolicyBackend`], chosen by name: `nftables` (the
//! kernel datapath). The eBPF datapath's enforcement is not written yet:
//! there, `none` reports every pod policy isolates, so nobody mistakes it
//! for enforcement.

pub mod nftables;

pub use strait_model::policy::PodRules;

pub trait PolicyBackend: Send {
    fn name(&self) -> &'static str;
    /// Make the datapath enforce exactly `pods`. Blocking. Returns how many
    /// datapath changes were made (0: nothing to do).
    fn apply(&mut self, pods: &[PodRules]) -> anyhow::Result<usize>;
}

pub fn for_datapath(mode: strait_model::lab::Mode) -> Box<dyn PolicyBackend> {
    match mode {
        strait_model::lab::Mode::Routed => Box::new(nftables::NftPolicy::default()),
        strait_model::lab::Mode::Ebpf => Box::new(NotEnforced),
    }
}

/// The eBPF datapath, for now: refuses to pretend.
pub struct NotEnforced;

impl PolicyBackend for NotEnforced {
    fn name(&self) -> &'static str {
        "none"
    }

    fn apply(&mut self, pods: &[PodRules]) -> anyhow::Result<usize> {
        let isolated: Vec<&str> = pods
            .iter()
            .filter(|p| !p.ingress.isolated_by.is_empty() || !p.egress.isolated_by.is_empty())
            .map(|p| p.pod.as_str())
            .collect();
        anyhow::ensure!(
            isolated.is_empty(),
            "NetworkPolicy is not enforced on the eBPF datapath yet; pods left open: {}",
            isolated.join(", ")
        );
        Ok(0)
    }
}
