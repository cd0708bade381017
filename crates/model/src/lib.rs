//! Pure logic for strait, with no I/O: the IPAM allocator, the names strait
//! gives kernel objects, the agent's API messages, the cluster snapshot in
//! Kubernetes shape, routed-mode route planning and the lab's address plan.
//!
//! Everything here is deterministic and unit-tested without root; the agent,
//! the CNI plugin and the lab build on it and do the kernel I/O themselves.

pub mod api;
pub mod bgp;
pub mod cloud;
pub mod cluster;
pub mod cniconf;
pub mod datastore;
pub mod ipam;
pub mod ippool;
pub mod lab;
pub mod naming;
pub mod nft;
pub mod overlay;
pub mod policy;
pub mod racks;

pub mod routes;
pub mod services;
pub mod slice;
pub mod underlay;
