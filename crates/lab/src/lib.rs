//! The strait lab: a whole multi-node cluster made of network namespaces on
//! one machine. A fabric namespace holds a bridge; each node is a namespace
//! joined to it by a veth, running its own `strait agent`; each pod is a
//! namespace wired by running `strait-cni` exactly as a container runtime
//! would (environment plus stdin), with a built-in echo server that answers
//! with the pod's name. The host's root network namespace is never used as a
//! node or pod.

pub mod cgroup;
pub mod cloud;
pub mod cmd;
pub mod control_plane;

pub mod echo;
pub mod explain;
pub mod gateway;
pub mod hops;
pub mod hops_macvlan;
pub mod objects;
pub mod probe;
pub mod publish;
pub mod racks;
pub mod run;
pub mod state;

pub use state::LabState;
