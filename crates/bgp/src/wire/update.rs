//! UPDATE (RFC 4271 §4.3) and the path attributes strait reads: ORIGIN,
//! AS_PATH, NEXT_HOP, MED, LOCAL_PREF, ATOMIC_AGGREGATE, COMMUNITIES,
//! ORIGINATOR_ID and CLUSTER_LIST (RFC 4456), MP_REACH/MP_UNREACH
//! (RFC 4760). Other attributes are kept as bytes and passed on when
//! transitive.

use super::{
    code, decode_prefixes, encode_prefix, Codec, Family, Notification, HEADER_LEN, MAX_LEN,
};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const PARTIAL: u8 = 0x20;
const EXTENDED: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AsSegment {
    Set(Vec<u32>),
    Sequence(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MpReach {
    pub family: Family,
    /// One address, or for IPv6 a global and a link-local one.
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<IpNet>,
}

/// An attribute strait does not interpret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawAttr {
    pub flags: u8,
    pub code: u8,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathAttrs {
    pub origin: Option<Origin>,
    pub as_path: Vec<AsSegment>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub communities: Vec<u32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub other: Vec<RawAttr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// IPv4 routes withdrawn (the classic field).
    pub withdrawn: Vec<IpNet>,
    pub attrs: PathAttrs,
    /// IPv4 routes announced (the classic field).
    pub nlri: Vec<IpNet>,
}

impl PathAttrs {
    /// How many ASes the path counts for best-path selection (a set counts
    /// as one).
    pub fn as_path_len(&self) -> usize {
        self.as_path
            .iter()
            .map(|s| match s {
                AsSegment::Set(_) => 1,
                AsSegment::Sequence(v) => v.len(),
            })
            .sum()
    }

    /// The neighbouring AS: the first of the path.
    pub fn first_as(&self) -> Option<u32> {
        match self.as_path.first()? {
            AsSegment::Sequence(v) => v.first().copied(),
            AsSegment::Set(_) => None,
        }
    }

    pub fn contains_as(&self, asn: u32) -> bool {
        self.as_path.iter().any(|s| match s {
            AsSegment::Set(v) | AsSegment::Sequence(v) => v.contains(&asn),
        })
    }

    /// The path with `asn` put in front (what an eBGP speaker sends).
    pub fn prepend(&mut self, asn: u32) {
        match self.as_path.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, asn),
            _ => self.as_path.insert(0, AsSegment::Sequence(vec![asn])),
        }
    }
}

impl Update {
    /// The End-of-RIB marker of a family (RFC 4724 §2).
    pub fn end_of_rib(family: Family) -> Update {
        if family == Family::IPV4_UNICAST {
            return Update::default();
        }
        Update {
            attrs: PathAttrs {
                mp_unreach: Some(MpUnreach {
                    family,
                    withdrawn: vec![],
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Which family's End-of-RIB this is, if it is one.
    pub fn is_end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        let a = &self.attrs;
        if *a == PathAttrs::default() {
            return Some(Family::IPV4_UNICAST);
        }
        match &a.mp_unreach {
            Some(u)
                if u.withdrawn.is_empty()
                    && PathAttrs {
                        mp_unreach: None,
                        ..a.clone()
                    } == PathAttrs::default() =>
            {
                Some(u.family)
            }
            _ => None,
        }
    }

    /// Announce `prefixes` with `attrs` in as few UPDATEs as fit 4096 bytes
    /// each: IPv4 in the classic NLRI field, IPv6 in MP_REACH with
    /// `v6_next_hops`.
    pub fn announce(
        attrs: &PathAttrs,
        prefixes: &[IpNet],
        v6_next_hops: &[IpAddr],
        codec: Codec,
    ) -> Vec<Update> {
        let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
            prefixes.iter().partition(|p| matches!(p, IpNet::V4(_)));
        let mut out = vec![];
        let base = {
            let mut b = vec![];
            attrs.encode(&mut b, codec);
            b.len()
        };
        // Room for prefixes beside the header, two length fields and the
        // attributes (plus an MP_REACH header of up to 3+1+32+1 bytes, and
        // its extended length).
        let room = MAX_LEN - HEADER_LEN - 4 - base - 42;
        for chunk in chunks(&v4, room) {
            out.push(Update {
                withdrawn: vec![],
                attrs: attrs.clone(),
                nlri: chunk.to_vec(),
            });
        }
        for chunk in chunks(&v6, room) {
            let mut a = attrs.clone();
            a.next_hop = None;
            a.mp_reach = Some(MpReach {
                family: Family::IPV6_UNICAST,
                next_hops: v6_next_hops.to_vec(),
                nlri: chunk.to_vec(),
            });
            out.push(Update {
                withdrawn: vec![],
                attrs: a,
                nlri: vec![],
            });
        }
        out
    }

    /// Withdraw `prefixes` in as few UPDATEs as fit.
    pub fn withdraw(prefixes: &[IpNet]) -> Vec<Update> {
        let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
            prefixes.iter().partition(|p| matches!(p, IpNet::V4(_)));
        let room = MAX_LEN - HEADER_LEN - 4 - 8;
        let mut out: Vec<Update> = chunks(&v4, room)
            .map(|c| Update {
                withdrawn: c.to_vec(),
                ..Default::default()
            })
            .collect();
        for c in chunks(&v6, room) {
            out.push(Update {
                attrs: PathAttrs {
                    mp_unreach: Some(MpUnreach {
                        family: Family::IPV6_UNICAST,
                        withdrawn: c.to_vec(),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        out
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>, codec: Codec) {
        let mut w = vec![];
        for p in &self.withdrawn {
            encode_prefix(&mut w, p);
        }
        out.extend_from_slice(&(w.len() as u16).to_be_bytes());
        out.extend_from_slice(&w);
        let mut a = vec![];
        self.attrs.encode(&mut a, codec);
        out.extend_from_slice(&(a.len() as u16).to_be_bytes());
        out.extend_from_slice(&a);
        for p in &self.nlri {
            encode_prefix(out, p);
        }
    }

    pub(super) fn decode(b: &[u8], codec: Codec) -> Result<Update, Notification> {
        let list = || Notification::new(code::UPDATE, code::MALFORMED_ATTRIBUTE_LIST);
        let wlen = u16::from_be_bytes([b[0], b[1]]) as usize;
        if b.len() < 2 + wlen + 2 {
            return Err(list());
        }
        let withdrawn = decode_prefixes(&b[2..2 + wlen], false)
            .map_err(|_| Notification::new(code::UPDATE, code::INVALID_NETWORK_FIELD))?;
        let at = 2 + wlen;
        let alen = u16::from_be_bytes([b[at], b[at + 1]]) as usize;
        if b.len() < at + 2 + alen {
            return Err(list());
        }
        let (attrs, has_path) = PathAttrs::decode(&b[at + 2..at + 2 + alen], codec)?;
        let nlri = decode_prefixes(&b[at + 2 + alen..], false)
            .map_err(|_| Notification::new(code::UPDATE, code::INVALID_NETWORK_FIELD))?;
        let missing = |c: u8| Notification::with_data(code::UPDATE, code::MISSING_WELL_KNOWN, [c]);
        if !nlri.is_empty() || attrs.mp_reach.is_some() {
            if attrs.origin.is_none() {
                return Err(missing(1));
            }
            // (An empty AS_PATH is valid: iBGP routes of the local AS.)
            if !has_path {
                return Err(missing(2));
            }
        }
        if !nlri.is_empty() && attrs.next_hop.is_none() {
            return Err(missing(3));
        }
        Ok(Update {
            withdrawn,
            attrs,
            nlri,
        })
    }
}

/// Prefix chunks whose encoding fits `room` bytes.
fn chunks(prefixes: &[IpNet], room: usize) -> impl Iterator<Item = &[IpNet]> {
    let mut rest = prefixes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut used = 0;
        let mut n = 0;
        for p in rest {
            let size = 1 + (p.prefix_len() as usize).div_ceil(8);
            if used + size > room {
                break;
            }
            used += size;
            n += 1;
        }
        let (c, r) = rest.split_at(n.max(1));
        rest = r;
        Some(c)
    })
}

fn put_attr(out: &mut Vec<u8>, flags: u8, code: u8, data: &[u8]) {
    if data.len() > 255 {
        out.push(flags | EXTENDED);
        out.push(code);
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    } else {
        out.push(flags & !EXTENDED);
        out.push(code);
        out.push(data.len() as u8);
    }
    out.extend_from_slice(data);
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl PathAttrs {
    fn encode(&self, out: &mut Vec<u8>, codec: Codec) {
        if let Some(o) = self.origin {
            put_attr(out, TRANSITIVE, 1, &[o as u8]);
        }
        if self.origin.is_some() || !self.as_path.is_empty() {
            let mut d = vec![];
            for s in &self.as_path {
                let (t, v) = match s {
                    AsSegment::Set(v) => (1, v),
                    AsSegment::Sequence(v) => (2, v),
                };
                d.push(t);
                d.push(v.len() as u8);
                for asn in v {
                    if codec.four_octet_as {
                        d.extend_from_slice(&asn.to_be_bytes());
                    } else {
                        let two = u16::try_from(*asn).unwrap_or(super::AS_TRANS);
                        d.extend_from_slice(&two.to_be_bytes());
                    }
                }
            }
            put_attr(out, TRANSITIVE, 2, &d);
        }
        if let Some(nh) = self.next_hop {
            put_attr(out, TRANSITIVE, 3, &nh.octets());
        }
        if let Some(m) = self.med {
            put_attr(out, OPTIONAL, 4, &m.to_be_bytes());
        }
        if let Some(l) = self.local_pref {
            put_attr(out, TRANSITIVE, 5, &l.to_be_bytes());
        }
        if self.atomic_aggregate {
            put_attr(out, TRANSITIVE, 6, &[]);
        }
        if !self.communities.is_empty() {
            let d: Vec<u8> = self
                .communities
                .iter()
                .flat_map(|c| c.to_be_bytes())
                .collect();
            put_attr(out, OPTIONAL | TRANSITIVE, 8, &d);
        }
        if let Some(o) = self.originator_id {
            put_attr(out, OPTIONAL, 9, &o.octets());
        }
        if !self.cluster_list.is_empty() {
            let d: Vec<u8> = self.cluster_list.iter().flat_map(|c| c.octets()).collect();
            put_attr(out, OPTIONAL, 10, &d);
        }
        if let Some(r) = &self.mp_reach {
            let mut d = r.family.afi.to_be_bytes().to_vec();
            d.push(r.family.safi);
            let nh: Vec<u8> = r.next_hops.iter().flat_map(ip_bytes).collect();
            d.push(nh.len() as u8);
            d.extend_from_slice(&nh);
            d.push(0);
            for p in &r.nlri {
                encode_prefix(&mut d, p);
            }
            put_attr(out, OPTIONAL, 14, &d);
        }
        if let Some(u) = &self.mp_unreach {
            let mut d = u.family.afi.to_be_bytes().to_vec();
            d.push(u.family.safi);
            for p in &u.withdrawn {
                encode_prefix(&mut d, p);
            }
            put_attr(out, OPTIONAL, 15, &d);
        }
        for r in &self.other {
            // Passed on as received, marked partial when optional transitive
            // (RFC 4271 §5).
            let flags = if r.flags & (OPTIONAL | TRANSITIVE) == OPTIONAL | TRANSITIVE {
                r.flags | PARTIAL
            } else {
                r.flags
            };
            put_attr(out, flags, r.code, &r.data);
        }
    }

    /// The attributes, and whether an AS_PATH was among them.
    fn decode(mut b: &[u8], codec: Codec) -> Result<(PathAttrs, bool), Notification> {
        let list = || Notification::new(code::UPDATE, code::MALFORMED_ATTRIBUTE_LIST);
        let mut a = PathAttrs::default();
        let mut seen = [false; 256];
        while !b.is_empty() {
            if b.len() < 3 {
                return Err(list());
            }
            let (flags, c) = (b[0], b[1]);
            let (len, hdr) = if flags & EXTENDED != 0 {
                if b.len() < 4 {
                    return Err(list());
                }
                (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
            } else {
                (b[2] as usize, 3)
            };
            if b.len() < hdr + len {
                // Overruns the list (RFC 7606 §4: a malformed list).
                return Err(list());
            }
            let whole = &b[..hdr + len];
            let d = &b[hdr..hdr + len];
            b = &b[hdr + len..];
            if std::mem::replace(&mut seen[c as usize], true) {
                return Err(list());
            }
            let flag_err =
                || Notification::with_data(code::UPDATE, code::ATTRIBUTE_FLAGS, whole.to_vec());
            let len_err =
                || Notification::with_data(code::UPDATE, code::ATTRIBUTE_LENGTH, whole.to_vec());
            let known_flags = |want: u8| {
                if flags & (OPTIONAL | TRANSITIVE) != want {
                    Err(flag_err())
                } else {
                    Ok(())
                }
            };
            let u32_of = |d: &[u8]| -> Result<u32, Notification> {
                Ok(u32::from_be_bytes(d.try_into().map_err(|_| len_err())?))
            };
            match c {
                1 => {
                    known_flags(TRANSITIVE)?;
                    if d.len() != 1 {
                        return Err(len_err());
                    }
                    a.origin = Some(match d[0] {
                        0 => Origin::Igp,
                        1 => Origin::Egp,
                        2 => Origin::Incomplete,
                        _ => {
                            return Err(Notification::with_data(
                                code::UPDATE,
                                code::INVALID_ORIGIN,
                                whole.to_vec(),
                            ))
                        }
                    });
                }
                2 => {
                    known_flags(TRANSITIVE)?;
                    a.as_path = decode_as_path(d, codec.four_octet_as)
                        .ok_or_else(|| Notification::new(code::UPDATE, code::MALFORMED_AS_PATH))?;
                }
                3 => {
                    known_flags(TRANSITIVE)?;
                    let o: [u8; 4] = d.try_into().map_err(|_| len_err())?;
                    let nh = Ipv4Addr::from(o);
                    if nh.is_unspecified() || nh.is_broadcast() || nh.is_multicast() {
                        return Err(Notification::with_data(
                            code::UPDATE,
                            code::INVALID_NEXT_HOP,
                            whole.to_vec(),
                        ));
                    }
                    a.next_hop = Some(nh);
                }
                4 => {
                    known_flags(OPTIONAL)?;
                    a.med = Some(u32_of(d)?);
                }
                5 => {
                    known_flags(TRANSITIVE)?;
                    a.local_pref = Some(u32_of(d)?);
                }
                6 => {
                    known_flags(TRANSITIVE)?;
                    if !d.is_empty() {
                        return Err(len_err());
                    }
                    a.atomic_aggregate = true;
                }
                8 => {
                    known_flags(OPTIONAL | TRANSITIVE)?;
                    if d.len() % 4 != 0 {
                        return Err(len_err());
                    }
                    a.communities = d
                        .chunks_exact(4)
                        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
                        .collect();
                }
                9 => {
                    known_flags(OPTIONAL)?;
                    let o: [u8; 4] = d.try_into().map_err(|_| len_err())?;
                    a.originator_id = Some(o.into());
                }
                10 => {
                    known_flags(OPTIONAL)?;
                    if d.len() % 4 != 0 {
                        return Err(len_err());
                    }
                    a.cluster_list = d
                        .chunks_exact(4)
                        .map(|x| Ipv4Addr::new(x[0], x[1], x[2], x[3]))
                        .collect();
                }
                14 => {
                    known_flags(OPTIONAL)?;
                    a.mp_reach = Some(decode_mp_reach(d).ok_or_else(|| {
                        Notification::with_data(
                            code::UPDATE,
                            code::OPTIONAL_ATTRIBUTE,
                            whole.to_vec(),
                        )
                    })?);
                }
                15 => {
                    known_flags(OPTIONAL)?;
                    a.mp_unreach = Some(decode_mp_unreach(d).ok_or_else(|| {
                        Notification::with_data(
                            code::UPDATE,
                            code::OPTIONAL_ATTRIBUTE,
                            whole.to_vec(),
                        )
                    })?);
                }
                _ if flags & OPTIONAL == 0 => {
                    return Err(Notification::with_data(
                        code::UPDATE,
                        code::UNRECOGNIZED_WELL_KNOWN,
                        whole.to_vec(),
                    ));
                }
                _ => {
                    // Optional non-transitive attributes we don't know are
                    // dropped quietly; transitive ones travel on.
                    if flags & TRANSITIVE != 0 {
                        a.other.push(RawAttr {
                            flags: flags & !EXTENDED,
                            code: c,
                            data: d.to_vec(),
                        });
                    }
                }
            }
        }
        Ok((a, seen[2]))
    }
}

fn decode_as_path(mut d: &[u8], four: bool) -> Option<Vec<AsSegment>> {
    let width = if four { 4 } else { 2 };
    let mut out = vec![];
    while !d.is_empty() {
        if d.len() < 2 {
            return None;
        }
        let (t, n) = (d[0], d[1] as usize);
        if n == 0 || d.len() < 2 + n * width {
            return None;
        }
        let asns: Vec<u32> = d[2..2 + n * width]
            .chunks_exact(width)
            .map(|x| {
                if four {
                    u32::from_be_bytes([x[0], x[1], x[2], x[3]])
                } else {
                    u16::from_be_bytes([x[0], x[1]]) as u32
                }
            })
            .collect();
        out.push(match t {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            _ => return None,
        });
        d = &d[2 + n * width..];
    }
    Some(out)
}

fn family_of(d: &[u8]) -> Option<(Family, bool)> {
    if d.len() < 3 {
        return None;
    }
    let f = Family {
        afi: u16::from_be_bytes([d[0], d[1]]),
        safi: d[2],
    };
    match f.afi {
        1 => Some((f, false)),
        2 => Some((f, true)),
        _ => None,
    }
}

fn decode_mp_reach(d: &[u8]) -> Option<MpReach> {
    let (family, v6) = family_of(d)?;
    let nh_len = *d.get(3)? as usize;
    let nh = d.get(4..4 + nh_len)?;
    let next_hops = match (v6, nh_len) {
        (false, 4) => vec![IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]))],
        (true, 16) | (true, 32) => nh
            .chunks_exact(16)
            .map(|x| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(x).unwrap())))
            .collect(),
        _ => return None,
    };
    // One reserved byte, then the NLRI.
    let nlri = decode_prefixes(d.get(5 + nh_len..)?, v6).ok()?;
    Some(MpReach {
        family,
        next_hops,
        nlri,
    })
}

fn decode_mp_unreach(d: &[u8]) -> Option<MpUnreach> {
    let (family, v6) = family_of(d)?;
    Some(MpUnreach {
        family,
        withdrawn: decode_prefixes(&d[3..], v6).ok()?,
    })
}
