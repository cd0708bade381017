//! strait's BGP-4 speaker.
//!
//! - [`wire`]: messages to and from bytes, pure, every error mapped to its
//!   NOTIFICATION.
//! - [`fsm`]: the session state machine of RFC 4271 §8, without sockets or
//!   clocks: events in, actions out.
//! - [`rib`]: learned paths, best path with ECMP, graceful-restart stale
//!   marking, and the forwarding changes they make.
//! - [`reflect`]: what a route reflector passes on to each peer.
//! - [`session`]: one peer over TCP (MD5 when configured).
//! - [`speaker`]: the sessions, the RIB and what is originated, together.
//! - [`view`]: the routes as `strait bgp routes` shows them.

pub mod fsm;
pub mod reflect;
pub mod rib;
pub mod session;
pub mod speaker;
pub mod view;
pub mod wire;
