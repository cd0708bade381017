//! ENI-Trunking (seed 002): a `PodNetworking` selects pods by their labels
//! and their namespace's; each selected pod gets a member ENI of its node's
//! trunk ENI, with the PodNetworking's vSwitch and security groups, and the
//! agent records it in a [`PodEni`]. Unselected pods keep the shared ENIs'
//! secondary addresses (ENI multi-IP). `Fixed` allocation keeps a pod's
//! member ENI (and so its address) for a while after the pod goes, so a pod
//! recreated with the same name (a StatefulSet's) gets it back.
//!
//! Pure: selection, checks and the TTL arithmetic; the agent calls the
//! cloud and programs the kernel.

use crate::policy::selector::selects;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A network plane for the pods it selects, as Terway's CRD of that name.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "PodNetworking",
    plural = "podnetworkings",
    derive = "PartialEq",
    doc = "A network plane (ENI-Trunking): the pods it selects get member ENIs with its vSwitches and security groups.",
    printcolumn = r#"{"name":"Allocation","type":"string","jsonPath":".spec.allocationType.type"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PodNetworkingSpec {
    /// Pods whose labels match (with namespaceSelector: both must).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Pods in namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// vSwitches a member ENI may take its address from, in order of
    /// preference (the next is tried when one has none free).
    #[serde(rename = "vSwitchOptions")]
    pub vswitch_options: Vec<String>,
    /// The member ENI's security groups.
    #[serde(rename = "securityGroupIDs")]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub allocation_type: AllocationType,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationType {
    #[serde(rename = "type", default)]
    pub kind: AllocationKind,
    /// Fixed only: `TTL` (the only strategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_strategy: Option<String>,
    /// Fixed only: how long a gone pod's member ENI is kept for it
    /// ("90s", "5m", "1h30m", "5m0s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_after: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AllocationKind {
    /// The member ENI goes with the pod.
    #[default]
    Elastic,
    /// The member ENI waits `releaseAfter` for a pod of the same name.
    Fixed,
}

/// A Go-style duration ("1h2m3s", "90s", "5m0s") in seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 90s, 5m, 1h30m)");
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total += n * unit;
        num.clear();
    }
    if !num.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

impl PodNetworkingSpec {
    /// What makes the object unusable, said so the operator can fix it.
    pub fn check(&self) -> Result<(), String> {
        if self.pod_selector.is_none() && self.namespace_selector.is_none() {
            return Err(
                "set podSelector or namespaceSelector (a PodNetworking selecting every pod is refused)"
                    .into(),
            );
        }
        if self.vswitch_options.is_empty() {
            return Err("vSwitchOptions is empty: name the vSwitches member ENIs use".into());
        }
        if self.security_group_ids.is_empty() {
            return Err("securityGroupIDs is empty: name the member ENIs' groups".into());
        }
        let a = &self.allocation_type;
        match a.kind {
            AllocationKind::Elastic => {
                if a.release_after.is_some() {
                    return Err("releaseAfter is for allocationType Fixed".into());
                }
            }
            AllocationKind::Fixed => {
                if let Some(s) = &a.release_strategy {
                    if s != "TTL" {
                        return Err(format!("releaseStrategy {s:?}: only TTL is known"));
                    }
                }
                self.ttl_secs()?;
            }
        }
        Ok(())
    }

    /// Fixed: seconds a gone pod's member ENI is kept (default 5 minutes).
    pub fn ttl_secs(&self) -> Result<u64, String> {
        match &self.allocation_type.release_after {
            Some(s) => parse_duration(s).map_err(|e| format!("releaseAfter: {e}")),
            None => Ok(300),
        }
    }
}

/// Which PodNetworking selects a pod: the first by name whose selectors
/// all match. Objects that fail their check are skipped and reported.
pub fn select<'a>(
    networkings: &'a [std::sync::Arc<PodNetworking>],
    pod_labels: &BTreeMap<String, String>,
    ns_labels: &BTreeMap<String, String>,
) -> (Option<&'a PodNetworking>, Vec<String>) {
    let mut problems = vec![];
    let mut sorted: Vec<&PodNetworking> = networkings.iter().map(|n| &**n).collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for n in sorted {
        let name = n.metadata.name.as_deref().unwrap_or("?");
        if let Err(e) = n.spec.check() {
            problems.push(format!("PodNetworking {name}: {e}"));
            continue;
        }
        let hit = |sel: &Option<LabelSelector>, labels| match sel {
            None => Ok(true),
            Some(s) => selects(s, labels),
        };
        match (
            hit(&n.spec.pod_selector, pod_labels),
            hit(&n.spec.namespace_selector, ns_labels),
        ) {
            (Ok(true), Ok(true)) => return (Some(n), problems),
            (Err(e), _) | (_, Err(e)) => problems.push(format!("PodNetworking {name}: {e}")),
            _ => {}
        }
    }
    (None, problems)
}

/// A pod's member ENI, as the agent records it (Terway's `PodENI`). Kept
/// by the agent on the node; the cloud's records hold the member ENI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodEni {
    /// "namespace/name".
    pub pod: String,
    pub networking: String,
    pub member: String,
    pub mac: String,
    pub ip: IpAddr,
    pub vlan: u16,
    pub trunk: String,
    pub vswitch: String,
    pub security_groups: Vec<String>,
    pub allocation: AllocationKind,
    /// Fixed: seconds kept after the pod goes.
    #[serde(default)]
    pub ttl_secs: u64,
    /// When the pod went (unix ms); None while a pod holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at_ms: Option<u64>,
}

impl PodEni {
    /// Whether the member ENI should go now: an Elastic one as soon as its
    /// pod is gone, a Fixed one when its TTL ran out.
    pub fn expired(&self, now_ms: u64) -> bool {
        match self.released_at_ms {
            None => false,
            Some(at) => match self.allocation {
                AllocationKind::Elastic => true,
                AllocationKind::Fixed => now_ms >= at + self.ttl_secs * 1000,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pn(name: &str, yaml: &str) -> Arc<PodNetworking> {
        let spec: PodNetworkingSpec = serde_yaml::from_str(yaml).unwrap();
        Arc::new(PodNetworking::new(name, spec))
    }

    fn labels(s: &[(&str, &str)]) -> BTreeMap<String, String> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("5m0s"), Ok(300));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        for bad in ["", "5", "5d", "m", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selection_needs_every_selector_and_skips_broken_objects() {
        let nets = vec![
            pn(
                "b-web",
                "{podSelector: {matchLabels: {app: web}}, namespaceSelector: {matchLabels: {trunking: zoneb}}, vSwitchOptions: [vsw-b], securityGroupIDs: [sg-web]}",
            ),
            pn(
                "a-broken",
                "{vSwitchOptions: [vsw-b], securityGroupIDs: [sg-web]}",
            ),
            pn(
                "c-ns",
                "{namespaceSelector: {matchLabels: {trunking: zoneb}}, vSwitchOptions: [vsw-c], securityGroupIDs: [sg-all], allocationType: {type: Fixed, releaseStrategy: TTL, releaseAfter: 10m}}",
            ),
        ];
        let ns = labels(&[("trunking", "zoneb")]);
        let (hit, problems) = select(&nets, &labels(&[("app", "web")]), &ns);
        assert_eq!(hit.unwrap().metadata.name.as_deref(), Some("b-web"));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("a-broken") && problems[0].contains("podSelector"));
        let (hit, _) = select(&nets, &labels(&[("app", "db")]), &ns);
        let c = hit.unwrap();
        assert_eq!(c.metadata.name.as_deref(), Some("c-ns"));
        assert_eq!(c.spec.allocation_type.kind, AllocationKind::Fixed);
        assert_eq!(c.spec.ttl_secs(), Ok(600));
        let (hit, _) = select(&nets, &labels(&[("app", "web")]), &labels(&[]));
        assert!(hit.is_none(), "the namespace does not match");
    }

    #[test]
    fn checks_name_the_fix() {
        let bad = |y: &str| {
            serde_yaml::from_str::<PodNetworkingSpec>(y)
                .unwrap()
                .check()
                .unwrap_err()
        };
        assert!(
            bad("{podSelector: {}, vSwitchOptions: [], securityGroupIDs: [sg]}")
                .contains("vSwitchOptions")
        );
        assert!(
            bad("{podSelector: {}, vSwitchOptions: [v], securityGroupIDs: []}")
                .contains("securityGroupIDs")
        );
        assert!(bad("{podSelector: {}, vSwitchOptions: [v], securityGroupIDs: [s], allocationType: {type: Fixed, releaseAfter: soon}}")
            .contains("releaseAfter"));
        assert!(bad("{podSelector: {}, vSwitchOptions: [v], securityGroupIDs: [s], allocationType: {type: Elastic, releaseAfter: 5m}}")
            .contains("Fixed"));
    }

    #[test]
    fn elastic_goes_with_the_pod_fixed_waits_its_ttl() {
        let mut e = PodEni {
            pod: "default/web-0".into(),
            networking: "n".into(),
            member: "eni-1".into(),
            mac: "00:16:3e:00:00:01".into(),
            ip: "198.18.33.5".parse().unwrap(),
            vlan: 1,
            trunk: "eni-0".into(),
            vswitch: "vsw-b".into(),
            security_groups: vec!["sg".into()],
            allocation: AllocationKind::Elastic,
            ttl_secs: 0,
            released_at_ms: None,
        };
        assert!(!e.expired(u64::MAX));
        e.released_at_ms = Some(1000);
        assert!(e.expired(1000));
        e.allocation = AllocationKind::Fixed;
        e.ttl_secs = 60;
        assert!(!e.expired(60_999));
        assert!(e.expired(61_000));
    }
}
