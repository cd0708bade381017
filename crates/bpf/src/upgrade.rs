//! Versioned maps and upgrades between layouts.
//!
//! Pinned maps outlive the agent, so a new build meets the maps an older
//! build left. aya would reuse a pin by name whatever its layout, so:
//!
//! - maps live in `<pin dir>/v<MAPS_VERSION>/`; a build that changes what
//!   a map's key or value means bumps the version (bpf/lib/common.h);
//! - before loading, every pin in that directory is compared with the map
//!   the programs declare (type, key and value size, capacity, flags); a
//!   mismatch is replaced, loudly, never misread;
//! - after loading, state left by the previous version is copied in,
//!   converted ([`migrate`]), before any new program is attached; once all
//!   programs are replaced, entries the old programs made meanwhile are
//!   copied again and the old pins are removed ([`retire`]).
//!
//! Forwarding never stops: old programs keep their old maps until the new
//! programs atomically replace them, and new programs start with the old
//! state.

use crate::maps::{self, CtKey, CtVal, Endpoint, LbKey, LbVal, Lxc};
use aya::maps::{HashMap, MapData};
use std::path::{Path, PathBuf};

/// Must match STRAIT_MAPS_VERSION in bpf/lib/common.h (a test checks).
pub const MAPS_VERSION: u32 = 2;

/// Where the current layout's maps are pinned.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{MAPS_VERSION}"))
}

/// A map as declared by the programs or as found pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B max {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// Every pinned map the embedded programs declare.
pub fn declared() -> Vec<Layout> {
    let mut out: Vec<Layout> = vec![];
    for data in [
        crate::lxc_object(),
        crate::netdev_object(),
        crate::sock_object(),
        crate::tunnel_object(),
        crate::vlan_object(),
    ] {
        let obj = aya_obj::Object::parse(data).expect("embedded BPF objects parse");
        for (name, m) in &obj.maps {
            if !name.starts_with("strait_") || out.iter().any(|l| &l.name == name) {
                continue;
            }
            out.push(Layout {
                name: name.clone(),
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                flags: m.map_flags(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn pinned(path: &Path) -> Result<Layout, aya::maps::MapError> {
    let info = aya::maps::MapInfo::from_pin(path)?;
    Ok(Layout {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        map_type: info.map_type()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Before loading: any pin in the current version's directory whose layout
/// is not the declared one is removed (the loader then creates it afresh).
/// Returns one note per replaced map.
pub fn check_pins(pin_dir: &Path) -> std::io::Result<Vec<String>> {
    let dir = maps_dir(pin_dir);
    let mut notes = vec![];
    for want in declared() {
        let path = dir.join(&want.name);
        if !path.exists() {
            continue;
        }
        match pinned(&path) {
            Ok(have) if have == want => {}
            Ok(have) => {
                notes.push(format!(
                    "{}: pinned layout ({have}) is not this build's ({want}); replaced, its entries are lost",
                    want.name
                ));
                std::fs::remove_file(&path)?;
            }
            Err(e) => {
                notes.push(format!(
                    "{}: pinned map unreadable ({e}); replaced",
                    want.name
                ));
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(notes)
}

/// Layout 1 (before versioning): maps pinned straight in the pin directory.
mod v1 {
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Lxc {
        pub ip: u32,
        pub flags: u32,
    }
    unsafe impl aya::Pod for Lxc {}

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct CtVal {
        pub addr: u32,
        pub port: u16,
        pub _pad: u16,
        pub last_seen: u64,
    }
    unsafe impl aya::Pod for CtVal {}

    pub const MAPS: &[&str] = &[
        "strait_endpoints",
        "strait_lxc",
        "strait_metrics",
        "strait_config",
        "strait_events",
        "strait_lb",
        "strait_ct",
        "strait_ct_rev",
        "strait_affinity",
        "strait_sock_rev",
    ];
}

fn open_at<K: aya::Pod, V: aya::Pod>(path: &Path) -> anyhow_lite::Result<HashMap<MapData, K, V>> {
    let data = MapData::from_pin(path).map_err(|e| anyhow_lite::err(path, e))?;
    HashMap::try_from(aya::maps::Map::from_map_data(data).map_err(|e| anyhow_lite::err(path, e))?)
        .map_err(|e| anyhow_lite::err(path, e))
}

/// Minimal error plumbing (this crate has no anyhow).
mod anyhow_lite {
    pub type Result<T> = std::result::Result<T, String>;
    pub fn err(path: &std::path::Path, e: impl std::fmt::Display) -> String {
        format!("{}: {e}", path.display())
    }
}

/// Copy `old` into `new` through `convert`; entries already in `new` are
/// kept unless `overwrite`. Returns how many were copied.
fn copy<K1, V1, K2, V2>(
    old: &HashMap<MapData, K1, V1>,
    new: &mut HashMap<MapData, K2, V2>,
    overwrite: bool,
    convert: impl Fn(&K1, &V1) -> Option<(K2, V2)>,
) -> Result<usize, String>
where
    K1: aya::Pod,
    V1: aya::Pod,
    K2: aya::Pod,
    V2: aya::Pod,
{
    let mut n = 0;
    for kv in old.iter() {
        let Ok((k, v)) = kv else { continue };
        let Some((k2, v2)) = convert(&k, &v) else {
            continue;
        };
        if !overwrite && new.get(&k2, 0).is_ok() {
            continue;
        }
        new.insert(k2, v2, 0).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

fn v1_present(pin_dir: &Path) -> bool {
    pin_dir.join("strait_lb").exists() || pin_dir.join("strait_ct").exists()
}

/// Copy v1 conntrack (both directions) into the current maps. A v1 entry
/// has no state: TCP counts as established (it was carrying data), and
/// its service id comes from the frontend in strait_lb.
fn copy_v1_ct(pin_dir: &Path, overwrite: bool) -> Result<usize, String> {
    let dir = maps_dir(pin_dir);
    let lb: HashMap<MapData, LbKey, LbVal> = open_at(&dir.join("strait_lb"))?;
    let svc_id = |addr: u32, port: u16, proto: u8| {
        lb.get(
            &LbKey {
                addr,
                port,
                slot: 0,
                proto,
                _pad: [0; 3],
            },
            0,
        )
        .map(|v| v.svc_id)
        .unwrap_or(0)
    };
    let state = |proto: u8| {
        if proto == 6 {
            maps::CT_ESTABLISHED
        } else {
            maps::CT_UDP
        }
    };
    let mut n = 0;
    for (name, reverse) in [("strait_ct", false), ("strait_ct_rev", true)] {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let old: HashMap<MapData, CtKey, v1::CtVal> = open_at(&path)?;
        let mut new: HashMap<MapData, CtKey, CtVal> = open_at(&dir.join(name))?;
        n += copy(&old, &mut new, overwrite, |k, v| {
            let id = if reverse {
                svc_id(v.addr, v.port, k.proto)
            } else {
                svc_id(k.daddr, k.dport, k.proto)
            };
            Some((
                *k,
                CtVal {
                    addr: v.addr,
                    port: v.port,
                    state: state(k.proto),
                    flags: if reverse { maps::CT_F_REVERSE } else { 0 },
                    last_seen: v.last_seen,
                    svc_id: id,
                    _pad: 0,
                },
            ))
        })?;
    }
    Ok(n)
}

/// After loading, before attaching: bring the previous layout's state into
/// the current maps. Returns what was done, for the log.
pub fn migrate(pin_dir: &Path) -> Result<Vec<String>, String> {
    if !v1_present(pin_dir) {
        return Ok(vec![]);
    }
    let dir = maps_dir(pin_dir);
    let mut notes = vec![];
    let same = |name: &str| (pin_dir.join(name), dir.join(name));
    notes.extend(copy_same::<u32, Endpoint>(pin_dir, "strait_endpoints")?);
    let (o, n) = same("strait_lxc");
    if o.exists() {
        let c = copy(
            &open_at::<u32, v1::Lxc>(&o)?,
            &mut open_at::<u32, Lxc>(&n)?,
            true,
            |k, v| {
                Some((
                    *k,
                    Lxc {
                        ip4: v.ip,
                        flags: v.flags,
                        ip6: [0; 16],
                    },
                ))
            },
        )?;
        notes.push(format!("strait_lxc: {c} converted (IPv6 source: none)"));
    }
    notes.extend(copy_same::<LbKey, LbVal>(pin_dir, "strait_lb")?);
    notes.extend(copy_same::<[u8; 8], [u8; 16]>(pin_dir, "strait_affinity")?);
    notes.extend(copy_same::<[u8; 16], [u8; 8]>(pin_dir, "strait_sock_rev")?);
    let (o, n) = same("strait_config");
    if o.exists() {
        let old: maps::ConfigMap = open_array(&o)?;
        let mut new: maps::ConfigMap = open_array(&n)?;
        if let Ok(v) = old.get(&0, 0) {
            new.set(0, v, 0).map_err(|e| e.to_string())?;
        }
    }
    let (o, n) = same("strait_metrics");
    if o.exists() {
        let old: maps::MetricsMap = open_array(&o)?;
        let mut new: maps::MetricsMap = open_array(&n)?;
        for i in 0..old.len() {
            if let Ok(v) = old.get(&i, 0) {
                new.set(i, v, 0).map_err(|e| e.to_string())?;
            }
        }
    }
    let c = copy_v1_ct(pin_dir, true)?;
    notes.push(format!(
        "strait_ct, strait_ct_rev: {c} converted (TCP as established)"
    ));
    Ok(notes)
}

/// Copy a hash map whose layout did not change between the versions.
fn copy_same<K: aya::Pod, V: aya::Pod>(pin_dir: &Path, name: &str) -> Result<Vec<String>, String> {
    let old = pin_dir.join(name);
    if !old.exists() {
        return Ok(vec![]);
    }
    let c = copy(
        &open_at::<K, V>(&old)?,
        &mut open_at::<K, V>(&maps_dir(pin_dir).join(name))?,
        true,
        |k, v| Some((*k, *v)),
    )?;
    Ok(vec![format!("{name}: {c} copied")])
}

fn open_array<T>(path: &Path) -> Result<T, String>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(path).map_err(|e| anyhow_lite::err(path, e))?;
    T::try_from(aya::maps::Map::from_map_data(data).map_err(|e| anyhow_lite::err(path, e))?)
        .map_err(|e| anyhow_lite::err(path, e))
}

/// Once every program of the previous build is replaced: copy conntrack
/// entries its programs made since [`migrate`], then remove its pins (the
/// kernel frees the maps with their last program). Returns notes.
pub fn retire(pin_dir: &Path) -> Result<Vec<String>, String> {
    if !v1_present(pin_dir) {
        return Ok(vec![]);
    }
    let c = copy_v1_ct(pin_dir, false)?;
    for name in v1::MAPS {
        let p = pin_dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| anyhow_lite::err(&p, e))?;
        }
    }
    Ok(vec![format!(
        "layout 1 retired: {c} late conntrack entries copied, its pins removed"
    )])
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_matches_the_c_header() {
        let header = include_str!("../../../bpf/lib/common.h");
        let line = header
            .lines()
            .find(|l| l.starts_with("#define STRAIT_MAPS_VERSION"))
            .expect("STRAIT_MAPS_VERSION defined");
        assert_eq!(
            line.split_whitespace()
                .nth(2)
                .unwrap()
                .parse::<u32>()
                .unwrap(),
            super::MAPS_VERSION
        );
    }

    #[test]
    fn every_map_is_declared_once_with_its_layout() {
        let d = super::declared();
        let ct = d.iter().find(|l| l.name == "strait_ct").expect("strait_ct");
        assert_eq!((ct.key_size, ct.value_size), (16, 24));
        let lxc = d.iter().find(|l| l.name == "strait_lxc").unwrap();
        assert_eq!(lxc.value_size, 24);
        assert!(d.iter().any(|l| l.name == "strait_frag"));
        assert!(d.iter().any(|l| l.name == "strait_hostport"));
    }
}
