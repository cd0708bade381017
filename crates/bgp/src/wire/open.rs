//! OPEN (RFC 4271 §4.2) and its capabilities (RFC 5492).

use super::{code, EncodeError, Family, Notification};
use std::net::Ipv4Addr;

/// What goes in the 2-octet "My AS" field when the real number doesn't fit
/// (RFC 6793).
pub const AS_TRANS: u16 = 23456;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// The sender's AS: from the 4-octet AS capability when present,
    /// otherwise the 2-octet field.
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

/// The graceful-restart capability (RFC 4724 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    /// The R bit: the sender has just restarted.
    pub restarting: bool,
    /// Seconds the sender asks its peers to keep its routes.
    pub restart_time: u16,
    /// Each family, and whether its forwarding state was kept.
    pub families: Vec<(Family, bool)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// RFC 4760.
    Multiprotocol(Family),
    /// RFC 2918.
    RouteRefresh,
    /// RFC 4724.
    GracefulRestart(Restart),
    /// RFC 6793.
    FourOctetAs(u32),
    /// Anything else, kept as received.
    Other { code: u8, data: Vec<u8> },
}

impl Capability {
    fn encode(&self, out: &mut Vec<u8>) {
        let (c, data): (u8, Vec<u8>) = match self {
            Capability::Multiprotocol(f) => {
                let mut d = f.afi.to_be_bytes().to_vec();
                d.extend_from_slice(&[0, f.safi]);
                (1, d)
            }
            Capability::RouteRefresh => (2, vec![]),
            Capability::GracefulRestart(Restart {
                restarting,
                restart_time,
                families,
            }) => {
                let head = (restart_time & 0x0fff) | if *restarting { 0x8000 } else { 0 };
                let mut d = head.to_be_bytes().to_vec();
                for (f, kept) in families {
                    d.extend_from_slice(&f.afi.to_be_bytes());
                    d.push(f.safi);
                    d.push(if *kept { 0x80 } else { 0 });
                }
                (64, d)
            }
            Capability::FourOctetAs(asn) => (65, asn.to_be_bytes().to_vec()),
            Capability::Other { code, data } => (*code, data.clone()),
        };
        out.push(c);
        out.push(data.len() as u8);
        out.extend_from_slice(&data);
    }

    fn decode(c: u8, d: &[u8]) -> Result<Capability, Notification> {
        let bad = || Notification::with_data(code::OPEN, 0, [c]);
        Ok(match c {
            1 => {
                if d.len() != 4 {
                    return Err(bad());
                }
                Capability::Multiprotocol(Family {
                    afi: u16::from_be_bytes([d[0], d[1]]),
                    safi: d[3],
                })
            }
            2 => Capability::RouteRefresh,
            64 => {
                if d.len() < 2 || (d.len() - 2) % 4 != 0 {
                    return Err(bad());
                }
                let head = u16::from_be_bytes([d[0], d[1]]);
                Capability::GracefulRestart(Restart {
                    restarting: head & 0x8000 != 0,
                    restart_time: head & 0x0fff,
                    families: d[2..]
                        .chunks_exact(4)
                        .map(|x| {
                            (
                                Family {
                                    afi: u16::from_be_bytes([x[0], x[1]]),
                                    safi: x[2],
                                },
                                x[3] & 0x80 != 0,
                            )
                        })
                        .collect(),
                })
            }
            65 => {
                let Ok(b) = <[u8; 4]>::try_from(d) else {
                    return Err(bad());
                };
                Capability::FourOctetAs(u32::from_be_bytes(b))
            }
            _ => Capability::Other {
                code: c,
                data: d.to_vec(),
            },
        })
    }
}

impl Open {
    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    pub fn families(&self) -> Vec<Family> {
        self.capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect()
    }

    pub fn route_refresh(&self) -> bool {
        self.capabilities.contains(&Capability::RouteRefresh)
    }

    pub fn graceful_restart(&self) -> Option<&Restart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(r) => Some(r),
            _ => None,
        })
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(4);
        let two = u16::try_from(self.asn).unwrap_or(AS_TRANS);
        out.extend_from_slice(&two.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.router_id.octets());
        // One capabilities parameter holding them all (RFC 5492 allows
        // either; BIRD, FRR and GoBGP read both).
        let mut caps = vec![];
        for c in &self.capabilities {
            c.encode(&mut caps);
        }
        let mut params = vec![];
        if !caps.is_empty() {
            if caps.len() > 253 {
                return Err(EncodeError::ParamsTooLong(caps.len() + 2));
            }
            params.push(2);
            params.push(caps.len() as u8);
            params.extend_from_slice(&caps);
        }
        out.push(params.len() as u8);
        out.extend_from_slice(&params);
        Ok(())
    }

    pub(super) fn decode(b: &[u8]) -> Result<Open, Notification> {
        let version = b[0];
        if version != 4 {
            return Err(Notification::with_data(
                code::OPEN,
                code::UNSUPPORTED_VERSION,
                4u16.to_be_bytes(),
            ));
        }
        let my_as = u16::from_be_bytes([b[1], b[2]]);
        let hold_time = u16::from_be_bytes([b[3], b[4]]);
        let router_id = Ipv4Addr::new(b[5], b[6], b[7], b[8]);
        let plen = b[9] as usize;
        let malformed = || Notification::new(code::OPEN, 0);
        if b.len() != 10 + plen {
            return Err(malformed());
        }
        if hold_time == 1 || hold_time == 2 {
            return Err(Notification::new(code::OPEN, code::UNACCEPTABLE_HOLD_TIME));
        }
        if router_id.is_unspecified() {
            return Err(Notification::new(code::OPEN, code::BAD_BGP_IDENTIFIER));
        }
        let mut caps = vec![];
        let mut p = &b[10..];
        while !p.is_empty() {
            if p.len() < 2 || p.len() < 2 + p[1] as usize {
                return Err(malformed());
            }
            let (kind, len) = (p[0], p[1] as usize);
            let value = &p[2..2 + len];
            if kind != 2 {
                return Err(Notification::new(
                    code::OPEN,
                    code::UNSUPPORTED_OPTIONAL_PARAMETER,
                ));
            }
            let mut c = value;
            while !c.is_empty() {
                if c.len() < 2 || c.len() < 2 + c[1] as usize {
                    return Err(malformed());
                }
                let n = c[1] as usize;
                caps.push(Capability::decode(c[0], &c[2..2 + n])?);
                c = &c[2 + n..];
            }
            p = &p[2 + len..];
        }
        let asn = caps
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(my_as as u32);
        Ok(Open {
            asn,
            hold_time,
            router_id,
            capabilities: caps,
        })
    }
}
