//! strait's BGP-4 speaker.
//!
//! - [`wire`]: messages to and from bytes, pure, every error mapped to its
//!   NOTIFICATION.
//! - [`fsm`]: the session state machine of RFC 4271 §8, without sockets or
//!   clocks: events in, actions out.

pub mod fsm;
pub mod wire;
