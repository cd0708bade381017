//! Resolving a lab file into its plan: every node's address and pod CIDR,
//! every pod's node and namespace, every service's cluster IP, and the
//! racks, underlay and cloud sections checked against the address plan.

use super::*;
use crate::cluster::ClusterObject;

impl LabFile {
    /// Check the file and compute the address plan.
    pub fn plan(&self) -> Result<LabPlan, LabError> {
        let name = &self.name;
        if !valid_name(name, 16) {
            return Err(LabError::Invalid(format!(
                "lab name {name:?} must be 1-16 characters of a-z, 0-9 and '-'"
            )));
        }
        let spec = &self.spec;
        if spec.nodes.is_empty() {
            return Err(LabError::Invalid(
                "spec.nodes is empty: a lab needs at least one node".into(),
            ));
        }
        if !(576..=9000).contains(&spec.mtu) {
            return Err(LabError::Invalid(format!(
                "spec.mtu {} is outside 576..=9000",
                spec.mtu
            )));
        }
        let mode = match (spec.mode, spec.datapath) {
            (Some(m), Some(d)) if m != d => {
                return Err(LabError::Invalid(format!(
                    "spec.mode ({m}) and spec.datapath ({d}) disagree; keep spec.datapath (kernel or ebpf) and drop spec.mode"
                )))
            }
            (m, d) => d.or(m).unwrap_or_default(),
        };
        let ap = &spec.address_plan;
        let fabric_hosts = ap.fabric.hosts().count();
        if spec.nodes.len() > fabric_hosts.saturating_sub(8) {
            return Err(LabError::Invalid(format!(
                "fabric {} has room for {} nodes, the lab has {} (the top 8 addresses are kept for external clients)",
                ap.fabric,
                fabric_hosts.saturating_sub(8),
                spec.nodes.len()
            )));
        }
        let blocks: Vec<Ipv4Net> = ap
            .pod_cidr
            .subnets(ap.node_mask_size)
            .map_err(|_| {
                LabError::Invalid(format!(
                    "nodeMaskSize /{} must be at least the pod CIDR's /{} and at most /30",
                    ap.node_mask_size,
                    ap.pod_cidr.prefix_len()
                ))
            })?
            .take(spec.nodes.len())
            .collect();
        if ap.node_mask_size > 30 {
            return Err(LabError::Invalid(format!(
                "nodeMaskSize /{} leaves no pod addresses",
                ap.node_mask_size
            )));
        }
        if blocks.len() < spec.nodes.len() {
            return Err(LabError::Invalid(format!(
                "pod CIDR {} has only {} /{} blocks for {} nodes",
                ap.pod_cidr,
                blocks.len(),
                ap.node_mask_size,
                spec.nodes.len()
            )));
        }
        if ap.fabric.contains(&ap.pod_cidr.network()) || ap.pod_cidr.contains(&ap.fabric.network())
        {
            return Err(LabError::Invalid(format!(
                "fabric {} and pod CIDR {} overlap",
                ap.fabric, ap.pod_cidr
            )));
        }
        let racks = self.plan_racks()?;
        let mut per_rack: BTreeMap<&str, usize> = BTreeMap::new();
        let mut nodes = vec![];
        for (i, n) in spec.nodes.iter().enumerate() {
            if !valid_name(&n.name, 20) {
                return Err(LabError::Invalid(format!(
                    "node name {:?} must be 1-20 characters of a-z, 0-9 and '-'",
                    n.name
                )));
            }
            if nodes.iter().any(|x: &NodePlan| x.name == n.name) {
                return Err(LabError::Invalid(format!(
                    "node {:?} is listed twice",
                    n.name
                )));
            }
            let mut labels = n.labels.clone();
            let ip = match (&n.rack, racks.is_empty()) {
                (None, true) => ap.fabric.hosts().nth(i).expect("checked above"),
                (None, false) => {
                    return Err(LabError::Invalid(format!(
                        "node {}: the lab has racks; give it one (rack: {})",
                        n.name, racks[0].name
                    )))
                }
                (Some(r), _) => {
                    let rack = racks.iter().find(|x| &x.name == r).ok_or_else(|| {
                        LabError::Invalid(format!(
                            "node {}: rack {r:?} is not in spec.racks ({})",
                            n.name,
                            racks
                                .iter()
                                .map(|x| x.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                    let k = per_rack.entry(r).or_default();
                    *k += 1;
                    labels.insert(crate::racks::RACK_LABEL.into(), r.clone());
                    crate::racks::node_address(rack, *k - 1).ok_or_else(|| {
                        LabError::Invalid(format!(
                            "rack {r}: subnet {} has no room for another node",
                            rack.subnet
                        ))
                    })?
                }
            };
            nodes.push(NodePlan {
                name: n.name.clone(),
                ip,
                pod_cidr: IpNet::V4(blocks[i]),
                netns: node_netns(name, &n.name),
                fabric_port: format!("n{i}"),
                labels,
                annotations: n.annotations.clone(),
                rack: n.rack.clone(),
            });
        }
        let mut pods: Vec<PodPlan> = vec![];
        let mut next = 0usize;
        for obj in &self.objects {
            let ClusterObject::Pod(p) = obj else { continue };
            let pod = plan_pod(name, &nodes, &pods, &mut next, p)?;
            pods.push(pod);
        }
        let services = plan_services(ap.service_cidr, &[], &self.objects)?;
        Ok(LabPlan {
            name: name.clone(),
            mode,
            cross_node: spec.cross_node,
            control_plane: spec.control_plane,
            service_cidr: ap.service_cidr,
            services,
            no_redirect_peer: spec.no_redirect_peer,
            ip_cooldown_secs: spec.ip_cooldown_secs,
            metrics_port: spec.metrics_port,
            explain_port: spec.explain_port,
            mtu: spec.mtu,
            fabric: ap.fabric,
            racks,
            underlay: self.plan_underlay()?,
            cloud: self.plan_cloud()?,
            eni_pool: self.plan_eni_pool()?,
            nodes,
            pods,
        })
    }

    /// The VPC, checked on its own and against the address plan.
    fn plan_cloud(&self) -> Result<Option<crate::cloud::VpcSpec>, LabError> {
        let Some(c) = &self.spec.cloud else {
            return Ok(None);
        };
        c.check().map_err(LabError::Invalid)?;
        let ap = &self.spec.address_plan;
        let taken = [
            ("fabric", IpNet::V4(ap.fabric)),
            ("pod CIDR", IpNet::V4(ap.pod_cidr)),
            ("service CIDR", IpNet::V4(ap.service_cidr)),
        ];
        for v in &c.vswitches {
            let under = self
                .spec
                .underlay
                .iter()
                .map(|u| ("underlay subnet", IpNet::V4(u.cidr)));
            for (what, net) in taken.iter().copied().chain(under) {
                if net.contains(&v.cidr.network()) || v.cidr.contains(&net.network()) {
                    return Err(LabError::Invalid(format!(
                        "vSwitch {} ({}) overlaps the {what} {net}",
                        v.id, v.cidr
                    )));
                }
            }
        }
        for s in &c.slbs {
            let inside = taken
                .iter()
                .map(|(what, net)| (*what, *net))
                .chain(c.vswitches.iter().map(|v| ("vSwitch", v.cidr)))
                .find(|(_, net)| net.contains(&s.address));
            if let Some((what, net)) = inside {
                return Err(LabError::Invalid(format!(
                    "SLB {} address {} is inside the {what} {net}; give it an address of its own",
                    s.id, s.address
                )));
            }
        }
        Ok(Some(c.clone()))
    }

    /// crossNode eni's warm pool, checked against the VPC.
    fn plan_eni_pool(&self) -> Result<Option<crate::cloud::eniip::PoolConfig>, LabError> {
        let spec = &self.spec;
        let eni = spec.cross_node == CrossNodeMode::Eni;
        let cloud =
            match (&spec.cloud, eni) {
                (_, false) if spec.eni_pool.is_some() => {
                    return Err(LabError::Invalid(format!(
                        "spec.eniPool needs crossNode eni; crossNode is {}",
                        spec.cross_node
                    )))
                }
                (_, false) => return Ok(None),
                (None, true) => return Err(LabError::Invalid(
                    "crossNode eni needs spec.cloud (the VPC: vSwitches, security groups, quotas)"
                        .into(),
                )),
                (Some(c), true) => c,
            };
        let pool = spec
            .eni_pool
            .clone()
            .unwrap_or_else(|| crate::cloud::eniip::PoolConfig {
                vswitch: cloud.vswitches[0].id.clone(),
                security_groups: cloud
                    .security_groups
                    .first()
                    .map(|g| g.id.clone())
                    .into_iter()
                    .collect(),
                min_idle: 2,
                max_idle: 5,
                trunk: false,
            });
        if cloud.vswitch(&pool.vswitch).is_none() {
            return Err(LabError::Invalid(format!(
                "spec.eniPool.vswitch {} is not a vSwitch of spec.cloud",
                pool.vswitch
            )));
        }
        if let Some(g) = pool
            .security_groups
            .iter()
            .find(|g| !cloud.security_groups.iter().any(|s| s.id == **g))
        {
            return Err(LabError::Invalid(format!(
                "spec.eniPool.securityGroups: {g} is not a security group of spec.cloud"
            )));
        }
        if pool.min_idle > pool.max_idle {
            return Err(LabError::Invalid(format!(
                "spec.eniPool: minIdle {} is above maxIdle {}",
                pool.min_idle, pool.max_idle
            )));
        }
        Ok(Some(pool))
    }

    /// The underlay subnets, checked against the cross-node mode and the
    /// address plan.
    fn plan_underlay(&self) -> Result<Vec<crate::underlay::LabSubnet>, LabError> {
        let spec = &self.spec;
        let ap = &spec.address_plan;
        let l2 = matches!(
            spec.cross_node,
            CrossNodeMode::Vlan | CrossNodeMode::Macvlan
        );
        match (spec.underlay.is_empty(), l2) {
            (true, true) => {
                return Err(LabError::Invalid(format!(
                    "crossNode {} needs spec.underlay (subnets with a vlan, a cidr and a gateway)",
                    spec.cross_node
                )))
            }
            (false, true) | (true, false) => {}
            (false, false) => {
                return Err(LabError::Invalid(format!(
                    "spec.underlay needs crossNode vlan or macvlan; crossNode is {}",
                    spec.cross_node
                )))
            }
        }
        crate::underlay::check_lab_subnets(
            &spec.underlay,
            &[
                ("fabric", IpNet::V4(ap.fabric)),
                ("pod CIDR", IpNet::V4(ap.pod_cidr)),
                ("service CIDR", IpNet::V4(ap.service_cidr)),
            ],
        )
        .map_err(LabError::Invalid)?;
        Ok(spec.underlay.clone())
    }

    /// The racks, checked against the cross-node mode and the address plan.
    fn plan_racks(&self) -> Result<Vec<crate::racks::RackPlan>, LabError> {
        let spec = &self.spec;
        let ap = &spec.address_plan;
        match (spec.racks.is_empty(), spec.cross_node) {
            (true, CrossNodeMode::BgpTor) => {
                return Err(LabError::Invalid(
                    "crossNode bgp-tor needs spec.racks (each a subnet with a top-of-rack router)"
                        .into(),
                ))
            }
            (false, CrossNodeMode::BgpTor) | (true, _) => {}
            (false, other) => {
                return Err(LabError::Invalid(format!(
                    "spec.racks needs crossNode bgp-tor (nodes in different subnets reach each other through their racks' routers); crossNode is {other}"
                )))
            }
        }
        crate::racks::plan_racks(
            &self.name,
            &spec.racks,
            ap.fabric,
            &[
                ("pod CIDR", IpNet::V4(ap.pod_cidr)),
                ("service CIDR", IpNet::V4(ap.service_cidr)),
            ],
        )
        .map_err(LabError::Invalid)
    }
}

/// Cluster IPs for the Services among `objects`: as written (inside the
/// service CIDR), or the next free one; `existing` are taken already.
fn plan_services(
    service_cidr: Ipv4Net,
    existing: &[ServicePlan],
    objects: &[ClusterObject],
) -> Result<Vec<ServicePlan>, LabError> {
    let mut out: Vec<ServicePlan> = vec![];
    let mut taken: Vec<Ipv4Addr> = existing.iter().map(|s| s.cluster_ip).collect();
    let svcs: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            ClusterObject::Service(s) => Some(s),
            _ => None,
        })
        .collect();
    for s in &svcs {
        if let Some(ip) = s
            .spec
            .as_ref()
            .and_then(|sp| sp.cluster_ip.as_deref())
            .filter(|c| *c != "None" && !c.is_empty())
        {
            let name = s.metadata.name.clone().unwrap_or_default();
            let ip: Ipv4Addr = ip.parse().map_err(|_| {
                LabError::Invalid(format!(
                    "service {name}: clusterIP {ip:?} is not an IPv4 address"
                ))
            })?;
            if !service_cidr.contains(&ip) {
                return Err(LabError::Invalid(format!(
                    "service {name}: clusterIP {ip} is outside the service CIDR {}",
                    service_cidr
                )));
            }
            if taken.contains(&ip) {
                return Err(LabError::Invalid(format!(
                    "service {name}: clusterIP {ip} is used twice"
                )));
            }
            taken.push(ip);
        }
    }
    let mut free = service_cidr
        .hosts()
        .skip(9)
        .filter(|ip| !taken.contains(ip));
    for s in svcs {
        let name = s.metadata.name.clone().unwrap_or_default();
        let namespace = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        if !valid_name(&name, 40) {
            return Err(LabError::Invalid(format!(
                "service {name:?}: names must be lowercase a-z, 0-9 and '-'"
            )));
        }
        let given = s.spec.as_ref().and_then(|sp| sp.cluster_ip.clone());
        if given.as_deref() == Some("None") {
            continue;
        }
        let cluster_ip = match given.and_then(|c| c.parse().ok()) {
            Some(ip) => ip,
            None => free.next().ok_or_else(|| {
                LabError::Invalid(format!("service CIDR {} is full", service_cidr))
            })?,
        };
        out.push(ServicePlan {
            namespace,
            name,
            cluster_ip,
        });
    }
    Ok(out)
}

/// Plan one pod: its node (nodeName, or the next node round robin), its
/// namespace, its uid.
fn plan_pod(
    lab: &str,
    nodes: &[NodePlan],
    pods: &[PodPlan],
    next: &mut usize,
    p: &k8s_openapi::api::core::v1::Pod,
) -> Result<PodPlan, LabError> {
    let pname = p.metadata.name.clone().unwrap_or_default();
    let ns = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if !valid_name(&pname, 30) || !valid_name(&ns, 20) {
        return Err(LabError::Invalid(format!(
            "pod {ns}/{pname}: names must be lowercase a-z, 0-9 and '-' (pod up to 30, namespace up to 20 characters)"
        )));
    }
    if pods.iter().any(|x| x.name == pname && x.namespace == ns) {
        return Err(LabError::Invalid(format!(
            "pod {ns}/{pname} is defined twice"
        )));
    }
    let node = match p.spec.as_ref().and_then(|s| s.node_name.clone()) {
        Some(n) => {
            if !nodes.iter().any(|x| x.name == n) {
                return Err(LabError::Invalid(format!(
                    "pod {ns}/{pname} has nodeName {n:?}, which is not a lab node ({})",
                    nodes
                        .iter()
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            n
        }
        None => {
            let n = nodes[*next % nodes.len()].name.clone();
            *next += 1;
            n
        }
    };
    let uid = p
        .metadata
        .uid
        .clone()
        .unwrap_or_else(|| format!("lab-{lab}-{ns}-{pname}"));
    let mut ports: Vec<u16> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| u16::try_from(cp.container_port).ok())
        .filter(|port| *port != crate::lab::LAB_ECHO_PORT)
        .collect();
    ports.sort();
    ports.dedup();
    Ok(PodPlan {
        netns: pod_netns(lab, &ns, &pname),
        namespace: ns,
        name: pname,
        uid,
        node,
        ports,
    })
}

impl LabPlan {
    /// Plan objects added to a running lab (`strait lab apply`): new pods
    /// get a node and a namespace, new services a cluster IP. Pods and
    /// services the plan has already are left as they are. Returns what
    /// was added; the plan includes it.
    pub fn add(
        &mut self,
        objects: &[ClusterObject],
    ) -> Result<(Vec<PodPlan>, Vec<ServicePlan>), LabError> {
        let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            format!(
                "{}/{}",
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or_default()
            )
        };
        let fresh: Vec<ClusterObject> = objects
            .iter()
            .filter(|o| match o {
                ClusterObject::Pod(p) => self.pod(&key(&p.metadata)).is_none(),
                ClusterObject::Service(s) => self.service(&key(&s.metadata)).is_none(),
                _ => false,
            })
            .cloned()
            .collect();
        let mut next = self.pods.len();
        let mut pods = vec![];
        for o in &fresh {
            if let ClusterObject::Pod(p) = o {
                let mut all = self.pods.clone();
                all.extend(pods.iter().cloned());
                pods.push(plan_pod(&self.name, &self.nodes, &all, &mut next, p)?);
            }
        }
        let services = plan_services(self.service_cidr, &self.services, &fresh)?;
        self.pods.extend(pods.iter().cloned());
        self.services.extend(services.iter().cloned());
        Ok((pods, services))
    }

    pub fn service(&self, key: &str) -> Option<&ServicePlan> {
        match key.split_once('/') {
            Some((ns, n)) => self
                .services
                .iter()
                .find(|s| s.namespace == ns && s.name == n),
            None => self.services.iter().find(|s| s.name == key),
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod by `name` or `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodPlan> {
        match key.split_once('/') {
            Some((ns, n)) => self.pods.iter().find(|p| p.namespace == ns && p.name == n),
            None => self.pods.iter().find(|p| p.name == key),
        }
    }
}
