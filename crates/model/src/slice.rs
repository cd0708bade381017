//! EndpointSlices as the agent keeps them. A cluster with 10 000 services
//! has 100 000 endpoints; as k8s-openapi objects each endpoint is a 352-byte
//! struct plus a dozen heap strings (hints, zone, the full target
//! reference), about 60 MB that nothing reads. Every source converts a slice
//! to this on arrival and drops the original: an endpoint is its address,
//! its three conditions, its pod's and node's names.
//!
//! Address-family generic: addresses are `IpAddr`, checked against the
//! slice's `addressType` at conversion.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::IpAddr;

/// The label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressType {
    V4,
    V6,
    /// FQDN, or anything else: carries no addresses strait can use.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub namespace: String,
    pub name: String,
    /// The Service it belongs to; `None` when the label is missing.
    pub service: Option<String>,
    pub address_type: AddressType,
    pub ports: Vec<SlicePort>,
    /// One per address (the API allows several addresses per endpoint, all
    /// fungible).
    pub endpoints: Vec<SliceEndpoint>,
    /// Why the slice can't be used as written (an address that is not of
    /// its addressType): its endpoints are dropped and this is reported.
    pub problem: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// Empty for the unnamed port.
    pub name: String,
    /// As written; the compiler checks the range.
    pub port: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// targetRef.name: the pod behind it.
    pub pod: Option<Box<str>>,
    pub node: Option<Box<str>>,
}

impl Slice {
    /// The compact form of an EndpointSlice (discovery.k8s.io/v1).
    pub fn from_k8s(s: &EndpointSlice) -> Slice {
        let address_type = match s.address_type.as_str() {
            "IPv4" => AddressType::V4,
            "IPv6" => AddressType::V6,
            _ => AddressType::Other,
        };
        let mut out = Slice {
            namespace: s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: s.metadata.name.clone().unwrap_or_default(),
            service: s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
            address_type,
            ports: s
                .ports
                .iter()
                .flatten()
                .map(|p| SlicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port,
                })
                .collect(),
            endpoints: Vec::new(),
            problem: None,
        };
        if address_type == AddressType::Other {
            return out;
        }
        let count = s.endpoints.iter().map(|e| e.addresses.len()).sum();
        out.endpoints.reserve_exact(count);
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            for a in &e.addresses {
                let ip = match a.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == (address_type == AddressType::V4) => ip,
                    _ => {
                        out.problem = Some(format!(
                            "address {a:?} is not {}; slice ignored",
                            s.address_type
                        ));
                        out.endpoints = Vec::new();
                        return out;
                    }
                };
                out.endpoints.push(SliceEndpoint {
                    ip,
                    ready: c.and_then(|c| c.ready),
                    serving: c.and_then(|c| c.serving),
                    terminating: c.and_then(|c| c.terminating),
                    pod: e
                        .target_ref
                        .as_ref()
                        .and_then(|t| t.name.as_deref())
                        .map(Box::from),
                    node: e.node_name.as_deref().map(Box::from),
                });
            }
        }
        out
    }
}

impl From<&EndpointSlice> for Slice {
    fn from(s: &EndpointSlice) -> Slice {
        Slice::from_k8s(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Slice {
        let s: EndpointSlice = serde_yaml::from_str(yaml).unwrap();
        Slice::from_k8s(&s)
    }

    #[test]
    fn keeps_what_the_compiler_reads() {
        let s = parse(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {port: 9090}]
endpoints:
- addresses: [198.19.0.2, 198.19.0.3]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-a
  zone: z1
  hints: {forZones: [{name: z1}]}
  targetRef: {kind: Pod, name: web-0, namespace: shop, uid: 1234}
- addresses: [198.19.0.9]
"#,
        );
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("shop", "web-1"));
        assert_eq!(s.service.as_deref(), Some("web"));
        assert_eq!(s.address_type, AddressType::V4);
        assert_eq!(
            s.ports,
            vec![
                SlicePort {
                    name: "http".into(),
                    port: Some(8080)
                },
                SlicePort {
                    name: String::new(),
                    port: Some(9090)
                }
            ]
        );
        assert_eq!(s.endpoints.len(), 3, "one per address");
        let e = &s.endpoints[1];
        assert_eq!(e.ip, "198.19.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            (e.ready, e.serving, e.terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(
            (e.pod.as_deref(), e.node.as_deref()),
            (Some("web-0"), Some("node-a"))
        );
        let e = &s.endpoints[2];
        assert_eq!(
            (e.ready, e.pod.as_deref(), e.node.as_deref()),
            (None, None, None)
        );
        assert_eq!(s.problem, None);
    }

    #[test]
    fn an_address_of_the_wrong_family_voids_the_slice() {
        let s = parse(
            "metadata: {name: a}\naddressType: IPv4\nendpoints: [{addresses: [198.19.0.2]}, {addresses: ['fd00::2']}]\n",
        );
        assert!(s.endpoints.is_empty());
        assert!(s.problem.unwrap().contains("\"fd00::2\" is not IPv4"));
        let s = parse(
            "metadata: {name: a}\naddressType: IPv6\nendpoints: [{addresses: ['fd00::2']}]\n",
        );
        assert_eq!(
            (s.address_type, s.endpoints.len(), s.problem),
            (AddressType::V6, 1, None)
        );
        let s = parse(
            "metadata: {name: a}\naddressType: FQDN\nendpoints: [{addresses: [example.com]}]\n",
        );
        assert_eq!((s.address_type, s.endpoints.len()), (AddressType::Other, 0));
        assert_eq!(s.namespace, "default");
    }
}
