//! The live state `explain` reads: every namespace of the lab, its links
//! and addresses, and the kernel's own answers (route lookups with rules,
//! tc programs, FDB and neighbours) through iproute2's JSON output. Nothing
//! here models forwarding; the kernel is asked.

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One interface of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub netns: String,
    pub ifindex: u32,
    pub name: String,
    /// veth, macvlan, vxlan, bridge, ... ("" for loopback and the like).
    pub kind: String,
    /// The peer's (veth) or parent's (macvlan) ifindex, in `link_netnsid`'s
    /// namespace when that is set.
    pub link_index: Option<u32>,
    pub link_netnsid: Option<i64>,
    /// The peer's or parent's name, when it is in this namespace.
    pub link: Option<String>,
    pub master: Option<String>,
    pub addrs: Vec<IpAddr>,
    /// The namespace `link_netnsid` names (resolved through this
    /// namespace's id table).
    pub link_netns: Option<String>,
    /// Its MAC address ("" when it has none).
    pub mac: String,
}

/// The namespaces and their interfaces, read once per explanation, and
/// the site that answers the kernel questions about them.
pub struct World<'a> {
    pub site: &'a dyn super::site::Site,
    pub links: Vec<Link>,
}

/// What the kernel's FIB answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteGet {
    /// Forward out of `dev`, to `gateway` or (on-link) the destination.
    Out {
        dev: String,
        gateway: Option<IpAddr>,
        table: Option<String>,
    },
    /// The destination is this namespace's own.
    Local,
    /// No route, or an unreachable / blackhole / prohibit one.
    Refused(String),
}

/// Kernel questions asked (processes run) and their time, for the
/// benchmark.
pub static QUESTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static QUESTION_MICROS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<'a> World<'a> {
    /// One kernel question, counted for the benchmark.
    pub fn ask(&self, ns: &str, tool: &str, args: &[&str]) -> anyhow::Result<Value> {
        let t0 = std::time::Instant::now();
        let r = self.site.ask(ns, tool, args);
        QUESTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        QUESTION_MICROS.fetch_add(
            t0.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        r
    }

    /// Read the namespaces `names` (every one must answer).
    pub fn read(site: &'a dyn super::site::Site, names: &[String]) -> anyhow::Result<World<'a>> {
        let mut w = World {
            site,
            links: vec![],
        };
        // Every namespace at once: each is two processes of iproute2.
        let read: Vec<anyhow::Result<Vec<Link>>> = std::thread::scope(|s| {
            let w = &w;
            let handles: Vec<_> = names
                .iter()
                .map(|ns| s.spawn(move || w.read_netns(ns)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("reader panicked")))
                })
                .collect()
        });
        for r in read {
            w.links.extend(r?);
        }
        Ok(w)
    }

    fn read_netns(&self, ns: &str) -> anyhow::Result<Vec<Link>> {
        let mut links = vec![];
        {
            let ids: BTreeMap<i64, Option<String>> = self
                .ask(ns, "ip", &["netns", "list-id"])?
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    Some((
                        e["nsid"].as_i64()?,
                        self.site.netns_named(ns, e["name"].as_str()),
                    ))
                })
                .collect();
            let v = self.ask(ns, "ip", &["-d", "addr", "show"])?;
            for l in v.as_array().into_iter().flatten() {
                let addrs = l["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["scope"] != "link" && a["scope"] != "host")
                    .filter_map(|a| a["local"].as_str()?.parse().ok())
                    .collect();
                links.push(Link {
                    netns: ns.to_string(),
                    ifindex: l["ifindex"].as_u64().unwrap_or(0) as u32,
                    name: l["ifname"].as_str().unwrap_or("").to_string(),
                    kind: l["linkinfo"]["info_kind"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    link_index: l["link_index"].as_u64().map(|i| i as u32),
                    link: l["link"].as_str().map(str::to_string),
                    link_netnsid: l["link_netnsid"].as_i64(),
                    link_netns: l["link_netnsid"].as_i64().and_then(|i| match ids.get(&i) {
                        Some(named) => named.clone(),
                        // Not in the table yet: what the site makes of it.
                        None => self.site.netns_named(ns, None),
                    }),
                    mac: l["address"].as_str().unwrap_or("").to_string(),
                    master: l["master"].as_str().map(str::to_string),
                    addrs,
                });
            }
        }
        Ok(links)
    }

    pub fn link(&self, netns: &str, name: &str) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| l.netns == netns && l.name == name)
    }

    pub fn by_index(&self, netns: &str, ifindex: u32) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| l.netns == netns && l.ifindex == ifindex)
    }

    /// The other end of a veth, or a macvlan's parent: by name in this
    /// namespace, else by index in the namespace its netnsid names.
    pub fn peer(&self, l: &Link) -> Option<&Link> {
        if let Some(name) = &l.link {
            return self.link(&l.netns, name);
        }
        let peer = l.link_index?;
        let other = l.link_netns.as_deref()?;
        self.by_index(other, peer)
    }

    /// The interface holding `ip`, in any namespace but loopback.
    pub fn owner(&self, ip: IpAddr) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| l.name != "lo" && l.addrs.contains(&ip))
    }

    /// The interface a frame to `next_hop` out of `dev` reaches: the one
    /// with the MAC the neighbour table resolved it to (a node answering
    /// for its pods by proxy ARP receives their frames), else the one
    /// holding the address.
    pub fn receiver(&self, netns: &str, dev: &str, next_hop: IpAddr) -> Option<&Link> {
        let nh = next_hop.to_string();
        let mac = self
            .ask(netns, "ip", &["neigh", "show", "to", &nh, "dev", dev])
            .ok()
            .and_then(|v| v[0]["lladdr"].as_str().map(str::to_string));
        if let Some(mac) = mac {
            let mut found = self.links.iter().filter(|l| {
                l.mac.eq_ignore_ascii_case(&mac) && l.netns != netns && l.master.is_none()
            });
            if let Some(l) = found.next() {
                if found.next().is_none() {
                    return Some(l);
                }
            }
        }
        self.owner(next_hop)
    }

    /// Whether `netns` holds `ip` on one of its interfaces.
    pub fn holds(&self, netns: &str, ip: IpAddr) -> bool {
        self.links
            .iter()
            .any(|l| l.netns == netns && l.addrs.contains(&ip))
    }

    /// The first address of `netns`'s interface `name` in `ip`'s family.
    pub fn address_of(&self, netns: &str, name: &str, v4: bool) -> Option<IpAddr> {
        self.link(netns, name)?
            .addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == v4)
    }
}

impl World<'_> {
    /// Ask `netns`'s FIB (rules included) where a packet goes: locally sent
    /// when `iif` is None, else arriving on `iif`.
    pub fn route_get(&self, netns: &str, dst: IpAddr, src: IpAddr, iif: Option<&str>) -> RouteGet {
        let (d, s) = (dst.to_string(), src.to_string());
        let mut args = vec!["route", "get", d.as_str(), "from", s.as_str()];
        if let Some(i) = iif {
            args.extend(["iif", i]);
        }
        let v = match self.ask(netns, "ip", &args) {
            Ok(v) => v,
            Err(e) => {
                let e = e.to_string();
                let why = e.rsplit(": ").next().unwrap_or(&e).to_string();
                return RouteGet::Refused(why);
            }
        };
        let r = &v[0];
        match r["type"].as_str() {
            Some("local") => return RouteGet::Local,
            Some(t @ ("unreachable" | "blackhole" | "prohibit")) => {
                return RouteGet::Refused(format!("{t} route"))
            }
            _ => {}
        }
        match r["dev"].as_str() {
            Some("lo") => RouteGet::Local,
            Some(dev) => RouteGet::Out {
                dev: dev.to_string(),
                gateway: r["gateway"].as_str().and_then(|g| g.parse().ok()),
                table: r["table"].as_str().map(str::to_string),
            },
            None => RouteGet::Refused("no device in the route".into()),
        }
    }

    /// The names of the BPF programs attached at `dev`'s tc `dir` ("ingress"
    /// or "egress").
    pub fn tc_programs(&self, netns: &str, dev: &str, dir: &str) -> Vec<String> {
        self.ask(netns, "tc", &["filter", "show", "dev", dev, dir])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|f| f["options"]["bpf_name"].as_str().map(str::to_string))
            .collect()
    }

    /// A VXLAN device's remote for the neighbour `gateway`: its MAC from the
    /// neighbour table, then the FDB entry for that MAC.
    pub fn vxlan_remote(&self, netns: &str, dev: &str, gateway: IpAddr) -> Option<IpAddr> {
        let g = gateway.to_string();
        let neigh = self
            .ask(netns, "ip", &["neigh", "show", "dev", dev, "to", &g])
            .ok()?;
        let mac = neigh[0]["lladdr"].as_str()?.to_string();
        let fdb = self
            .ask(netns, "bridge", &["fdb", "show", "dev", dev])
            .ok()?;
        fdb.as_array()?
            .iter()
            .filter(|e| e["mac"].as_str() == Some(mac.as_str()))
            .find_map(|e| e["dst"].as_str()?.parse().ok())
    }
}

/// Every namespace's display name: the lab's node and pod names, the
/// fabric, the external client, routers; the namespace name otherwise.
pub fn labels(plan: &strait_model::lab::LabPlan) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for n in &plan.nodes {
        m.insert(n.netns.clone(), n.name.clone());
    }
    for p in &plan.pods {
        m.insert(p.netns.clone(), pod_label(p));
    }
    for r in &plan.racks {
        m.insert(r.netns.clone(), format!("tor-{}", r.name));
    }
    m.insert(strait_model::lab::fabric_netns(&plan.name), "fabric".into());
    m.insert(
        strait_model::lab::external_netns(&plan.name),
        "external".into(),
    );
    m.insert(
        strait_model::underlay::gateway_netns(&plan.name),
        "gateway".into(),
    );
    m.insert(crate::cloud::netns(&plan.name), "vpc".into());
    m.insert(
        strait_model::lab::control_plane_netns(&plan.name),
        "control-plane".into(),
    );
    m
}

/// A pod as people name it: `name` in the default namespace, else
/// `namespace/name`.
pub fn pod_label(p: &strait_model::lab::PodPlan) -> String {
    label_of(&p.namespace, &p.name)
}

/// `name` in the default namespace, else `namespace/name`.
pub fn label_of(namespace: &str, name: &str) -> String {
    if namespace == "default" {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}
