//! BGP-4 messages on the wire (RFC 4271 §4), pure: bytes in, values out,
//! and back. No I/O, no clocks. Every way a message can be wrong maps to
//! the NOTIFICATION code and subcode RFC 4271 §6 names for it, so the
//! session can answer a bad peer precisely.

mod open;
mod update;

pub use open::{Capability, Open, Restart, AS_TRANS};
pub use update::{AsSegment, MpReach, MpUnreach, Origin, PathAttrs, RawAttr, Update};

use std::fmt;

/// The 16 bytes of ones every message starts with.
pub const MARKER: [u8; 16] = [0xff; 16];
pub const HEADER_LEN: usize = 19;
/// RFC 4271's limit (RFC 8654's extended messages are not negotiated).
pub const MAX_LEN: usize = 4096;

/// Address family and subsequent address family (RFC 4760).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Family {
    pub afi: u16,
    pub safi: u8,
}

impl Family {
    pub const IPV4_UNICAST: Family = Family { afi: 1, safi: 1 };
    pub const IPV6_UNICAST: Family = Family { afi: 2, safi: 1 };
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Family::IPV4_UNICAST => f.write_str("ipv4-unicast"),
            Family::IPV6_UNICAST => f.write_str("ipv6-unicast"),
            Family { afi, safi } => write!(f, "afi {afi}/safi {safi}"),
        }
    }
}

/// What a session has agreed that changes how messages are coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    /// Both sides sent the 4-octet AS capability: AS_PATH carries 4-octet
    /// numbers (RFC 6793).
    pub four_octet_as: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            four_octet_as: true,
        }
    }
}

// One message at a time is read or written; boxing the UPDATE buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    /// RFC 2918: resend everything of this family.
    RouteRefresh(Family),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }
}

/// A NOTIFICATION (RFC 4271 §4.5): sent when the session is torn down, and
/// what decoding or the FSM reports as the reason to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// NOTIFICATION error codes and subcodes (RFC 4271 §4.5, §6; RFC 4486).
pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;

    // Message header errors.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;

    // OPEN message errors.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;

    // UPDATE message errors.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    pub const MISSING_WELL_KNOWN: u8 = 3;
    pub const ATTRIBUTE_FLAGS: u8 = 4;
    pub const ATTRIBUTE_LENGTH: u8 = 5;
    pub const INVALID_ORIGIN: u8 = 6;
    pub const INVALID_NEXT_HOP: u8 = 8;
    pub const OPTIONAL_ATTRIBUTE: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;

    // Cease (RFC 4486).
    pub const MAX_PREFIXES: u8 = 1;
    pub const ADMIN_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMIN_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const CONNECTION_COLLISION: u8 = 7;
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Self {
        Notification {
            code,
            subcode,
            data: vec![],
        }
    }

    pub fn with_data(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use code::*;
        let what = match (self.code, self.subcode) {
            (HEADER, CONNECTION_NOT_SYNCHRONIZED) => "header: connection not synchronized",
            (HEADER, BAD_MESSAGE_LENGTH) => "header: bad message length",
            (HEADER, BAD_MESSAGE_TYPE) => "header: bad message type",
            (HEADER, _) => "message header error",
            (OPEN, UNSUPPORTED_VERSION) => "OPEN: unsupported version number",
            (OPEN, BAD_PEER_AS) => "OPEN: bad peer AS",
            (OPEN, BAD_BGP_IDENTIFIER) => "OPEN: bad BGP identifier",
            (OPEN, UNSUPPORTED_OPTIONAL_PARAMETER) => "OPEN: unsupported optional parameter",
            (OPEN, UNACCEPTABLE_HOLD_TIME) => "OPEN: unacceptable hold time",
            (OPEN, UNSUPPORTED_CAPABILITY) => "OPEN: unsupported capability",
            (OPEN, _) => "OPEN message error",
            (UPDATE, MALFORMED_ATTRIBUTE_LIST) => "UPDATE: malformed attribute list",
            (UPDATE, UNRECOGNIZED_WELL_KNOWN) => "UPDATE: unrecognized well-known attribute",
            (UPDATE, MISSING_WELL_KNOWN) => "UPDATE: missing well-known attribute",
            (UPDATE, ATTRIBUTE_FLAGS) => "UPDATE: attribute flags error",
            (UPDATE, ATTRIBUTE_LENGTH) => "UPDATE: attribute length error",
            (UPDATE, INVALID_ORIGIN) => "UPDATE: invalid ORIGIN",
            (UPDATE, INVALID_NEXT_HOP) => "UPDATE: invalid NEXT_HOP",
            (UPDATE, OPTIONAL_ATTRIBUTE) => "UPDATE: optional attribute error",
            (UPDATE, INVALID_NETWORK_FIELD) => "UPDATE: invalid network field",
            (UPDATE, MALFORMED_AS_PATH) => "UPDATE: malformed AS_PATH",
            (UPDATE, _) => "UPDATE message error",
            (HOLD_TIMER_EXPIRED, _) => "hold timer expired",
            (FSM, _) => "finite state machine error",
            (CEASE, MAX_PREFIXES) => "cease: maximum number of prefixes reached",
            (CEASE, ADMIN_SHUTDOWN) => "cease: administrative shutdown",
            (CEASE, PEER_DECONFIGURED) => "cease: peer de-configured",
            (CEASE, ADMIN_RESET) => "cease: administrative reset",
            (CEASE, CONNECTION_REJECTED) => "cease: connection rejected",
            (CEASE, CONNECTION_COLLISION) => "cease: connection collision resolution",
            (CEASE, _) => "cease",
            (ROUTE_REFRESH, _) => "ROUTE-REFRESH message error",
            _ => "unknown error",
        };
        write!(f, "{what} ({}/{})", self.code, self.subcode)
    }
}

impl std::error::Error for Notification {}

/// Read one message from the front of `buf`. `Ok(None)`: not all of it has
/// arrived yet. `Ok(Some((msg, n)))`: `n` bytes were used. `Err`: what to
/// send the peer before closing.
pub fn decode(buf: &[u8], codec: Codec) -> Result<Option<(Message, usize)>, Notification> {
    if buf.len() < HEADER_LEN {
        // A wrong marker is known before the rest arrives.
        if buf.iter().take(16).any(|b| *b != 0xff) {
            return Err(Notification::new(
                code::HEADER,
                code::CONNECTION_NOT_SYNCHRONIZED,
            ));
        }
        return Ok(None);
    }
    if buf[..16] != MARKER {
        return Err(Notification::new(
            code::HEADER,
            code::CONNECTION_NOT_SYNCHRONIZED,
        ));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    let kind = buf[18];
    let bad_len = || {
        Notification::with_data(
            code::HEADER,
            code::BAD_MESSAGE_LENGTH,
            (len as u16).to_be_bytes(),
        )
    };
    let min = match kind {
        1 => HEADER_LEN + 10,
        2 => HEADER_LEN + 4,
        3 => HEADER_LEN + 2,
        4 => HEADER_LEN,
        5 => HEADER_LEN + 4,
        _ => {
            return Err(Notification::with_data(
                code::HEADER,
                code::BAD_MESSAGE_TYPE,
                [kind],
            ))
        }
    };
    if !(min..=MAX_LEN).contains(&len) || (kind == 4 && len != HEADER_LEN) {
        return Err(bad_len());
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[HEADER_LEN..len];
    let msg = match kind {
        1 => Message::Open(Open::decode(body)?),
        2 => Message::Update(Update::decode(body, codec)?),
        3 => Message::Notification(Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        }),
        4 => Message::Keepalive,
        5 => {
            // AFI, reserved (or RFC 7313's subtype), SAFI.
            Message::RouteRefresh(Family {
                afi: u16::from_be_bytes([body[0], body[1]]),
                safi: body[3],
            })
        }
        _ => unreachable!("kinds checked above"),
    };
    Ok(Some((msg, len)))
}

/// The message's bytes. An UPDATE too big for one message is an error
/// (the caller splits its routes; see [`Update::split`]).
pub fn encode(msg: &Message, codec: Codec) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&[0, 0]);
    let kind = match msg {
        Message::Open(o) => {
            o.encode(&mut out)?;
            1
        }
        Message::Update(u) => {
            u.encode(&mut out, codec);
            2
        }
        Message::Notification(n) => {
            out.push(n.code);
            out.push(n.subcode);
            out.extend_from_slice(&n.data);
            3
        }
        Message::Keepalive => 4,
        Message::RouteRefresh(f) => {
            out.extend_from_slice(&f.afi.to_be_bytes());
            out.push(0);
            out.push(f.safi);
            5
        }
    };
    out.insert(18, kind);
    if out.len() > MAX_LEN {
        return Err(EncodeError::TooLong(out.len()));
    }
    let len = out.len() as u16;
    out[16..18].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("message of {0} bytes is over BGP's 4096")]
    TooLong(usize),
    #[error("OPEN optional parameters of {0} bytes are over 255")]
    ParamsTooLong(usize),
}

/// A prefix in NLRI form: length in bits, then the fewest bytes that hold
/// it (RFC 4271 §4.3).
pub(crate) fn encode_prefix(out: &mut Vec<u8>, p: &ipnet::IpNet) {
    let len = p.prefix_len();
    out.push(len);
    let bytes = (len as usize).div_ceil(8);
    match p.network() {
        std::net::IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..bytes]),
        std::net::IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..bytes]),
    }
}

/// Prefixes of one family packed back to back. Host bits set past the
/// length are an error, as a length past the family's width is.
pub(crate) fn decode_prefixes(mut b: &[u8], v6: bool) -> Result<Vec<ipnet::IpNet>, ()> {
    let width = if v6 { 128 } else { 32 };
    let mut out = vec![];
    while let Some((&len, rest)) = b.split_first() {
        if len > width {
            return Err(());
        }
        let n = (len as usize).div_ceil(8);
        if rest.len() < n {
            return Err(());
        }
        let net = if v6 {
            let mut o = [0u8; 16];
            o[..n].copy_from_slice(&rest[..n]);
            ipnet::IpNet::V6(ipnet::Ipv6Net::new(o.into(), len).map_err(|_| ())?)
        } else {
            let mut o = [0u8; 4];
            o[..n].copy_from_slice(&rest[..n]);
            ipnet::IpNet::V4(ipnet::Ipv4Net::new(o.into(), len).map_err(|_| ())?)
        };
        if net.network() != net.addr() {
            return Err(());
        }
        out.push(net);
        b = &rest[n..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
