//! The strait CNI plugin. A container runtime runs `strait-cni` once per
//! verb with the CNI environment and the network configuration on stdin; the
//! plugin asks the node agent (over its unix socket) for the pod's address
//! and wires the pod itself: a veth pair, the address as /32, a default route
//! via the link-local gateway 169.254.1.1 with a permanent neighbour entry,
//! and the host's /32 route back to the pod. In macvlan mode the agent's
//! answer says so and `macvlan` wires the pod Bifrost's way instead.
//!
//! `types` and `env` are pure and unit-tested; `plugin` does the work.

pub mod client;
pub mod env;
pub mod macvlan;
pub mod plugin;
pub mod types;
