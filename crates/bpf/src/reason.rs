//! Verdict and drop reasons (bpf/lib/reasons.h).

pub const TO_STACK: u8 = 1;
pub const PEER_LOCAL: u8 = 2;
pub const HOSTVETH_LOCAL: u8 = 3;
pub const NEIGH_REMOTE: u8 = 4;
pub const PEER_FROM_NETDEV: u8 = 5;
pub const HOSTVETH_FROM_NETDEV: u8 = 6;
pub const FIB_TO_STACK: u8 = 7;
pub const TTL_TO_STACK: u8 = 8;
pub const SVC_DNAT: u8 = 9;
pub const SVC_CT: u8 = 10;
pub const SVC_REVNAT: u8 = 11;
pub const SVC_NO_BACKEND: u8 = 12;
pub const SVC_MASQUERADE: u8 = 13;
pub const SOCK_LB: u8 = 14;
pub const SVC_HAIRPIN: u8 = 15;
pub const ICMP_REVNAT: u8 = 16;
pub const HOSTPORT_TO_STACK: u8 = 17;
pub const LOCAL_LINK: u8 = 18;
pub const CT_INSERT_FAILED: u8 = 19;
pub const MTU_TO_STACK: u8 = 20;
pub const IPIP_ENCAP: u8 = 21;
pub const IPIP_DECAP: u8 = 22;
pub const VLAN_PORT: u8 = 23;
pub const SVC_VETH: u8 = 24;
pub const DROP_SOURCE_SPOOF: u8 = 128;
pub const DROP_MALFORMED: u8 = 129;
pub const DROP_REDIRECT_FAILED: u8 = 130;
pub const DROP_NAT_FAILED: u8 = 131;
pub const DROP_UNKNOWN_ENDPOINT: u8 = 132;
pub const DROP_LB_INCONSISTENT: u8 = 133;
pub const DROP_ETHERTYPE: u8 = 134;
pub const DROP_ARP_SPOOF: u8 = 135;
pub const DROP_IPIP_UNKNOWN_PEER: u8 = 136;
pub const DROP_IPIP_FRAGMENT: u8 = 137;
pub const DROP_TUNNEL_NO_ROUTE: u8 = 138;
pub const DROP_ENCAP_FAILED: u8 = 139;
pub const DROP_POLICY_INGRESS: u8 = 140;
pub const DROP_POLICY_EGRESS: u8 = 141;
pub const DROP_VLAN_FOREIGN: u8 = 142;
pub const DROP_VLAN_PUSH_FAILED: u8 = 143;

/// A short name and what it means, for tables and `monitor`.
pub fn describe(code: u8) -> (&'static str, &'static str) {
    match code {
        TO_STACK => (
            "to-stack",
            "not for the fast path: handed to the host stack",
        ),
        PEER_LOCAL => ("peer-local", "same node: bpf_redirect_peer into the pod"),
        HOSTVETH_LOCAL => (
            "hostveth-local",
            "same node, no redirect_peer: out of the pod's host veth",
        ),
        NEIGH_REMOTE => (
            "neigh-remote",
            "other node: bpf_fib_lookup + bpf_redirect_neigh",
        ),
        PEER_FROM_NETDEV => (
            "peer-from-netdev",
            "from the uplink: bpf_redirect_peer into the pod",
        ),
        HOSTVETH_FROM_NETDEV => (
            "hostveth-from-netdev",
            "from the uplink, no redirect_peer: out of the pod's host veth",
        ),
        FIB_TO_STACK => (
            "fib-to-stack",
            "FIB says local, blackhole or unreachable: host stack decides",
        ),
        TTL_TO_STACK => (
            "ttl-to-stack",
            "TTL would expire: host stack answers with ICMP",
        ),
        SVC_DNAT => (
            "svc-dnat",
            "service VIP translated to a backend (new connection)",
        ),
        SVC_CT => ("svc-ct", "service VIP translated by an existing connection"),
        SVC_REVNAT => ("svc-revnat", "a backend's reply translated back to the VIP"),
        SVC_NO_BACKEND => (
            "svc-no-backend",
            "service with no ready backend: the host stack rejects",
        ),
        SVC_MASQUERADE => (
            "svc-masquerade",
            "external connection to a backend on another node: forwarded by the stack, masqueraded",
        ),
        SOCK_LB => (
            "sock-lb",
            "a node process's socket connected straight to a backend (no NAT)",
        ),
        SVC_HAIRPIN => (
            "svc-hairpin",
            "a pod reached itself through a service: source NATed to 169.254.42.1",
        ),
        ICMP_REVNAT => (
            "icmp-revnat",
            "an ICMP error about a service connection, translated back to the VIP",
        ),
        HOSTPORT_TO_STACK => (
            "hostport-to-stack",
            "reply of a hostPort connection: the host's NAT translates it back",
        ),
        LOCAL_LINK => (
            "local-link",
            "ARP or IPv6 link-local from a pod: the host stack answers",
        ),
        CT_INSERT_FAILED => (
            "ct-insert-failed",
            "conntrack map refused an entry (full): forwarded untracked",
        ),
        MTU_TO_STACK => (
            "mtu-to-stack",
            "too big for the egress (GSO segments included): host stack sends ICMP",
        ),
        IPIP_ENCAP => (
            "ipip-encap",
            "other node over IP-in-IP: outer node-to-node header added in eBPF, out of the uplink",
        ),
        IPIP_DECAP => (
            "ipip-decap",
            "IP-in-IP from a known node: outer header removed in eBPF",
        ),
        VLAN_PORT => (
            "vlan-port",
            "macvlan mode: a VLAN's frame from the uplink, untagged, into its macvlan port",
        ),
        SVC_VETH => (
            "svc-veth",
            "macvlan mode: from a pod's service veth to the host stack (translated connections are masqueraded there)",
        ),
        DROP_IPIP_UNKNOWN_PEER => (
            "drop-ipip-unknown-peer",
            "IP-in-IP whose outer source is not a node of the cluster",
        ),
        DROP_IPIP_FRAGMENT => (
            "drop-ipip-fragment",
            "a fragment of an IP-in-IP packet (strait never sends them)",
        ),
        DROP_TUNNEL_NO_ROUTE => (
            "drop-tunnel-no-route",
            "no route to the peer node for the outer header, or no node behind the route",
        ),
        DROP_ENCAP_FAILED => (
            "drop-encap-failed",
            "the kernel refused to make room for the outer header",
        ),
        DROP_POLICY_INGRESS => (
            "drop-policy-ingress",
            "NetworkPolicy: the destination is isolated for ingress and no rule admits this",
        ),
        DROP_POLICY_EGRESS => (
            "drop-policy-egress",
            "NetworkPolicy: the source is isolated for egress and no rule admits this",
        ),
        DROP_UNKNOWN_ENDPOINT => (
            "drop-unknown-endpoint",
            "from a host veth the agent has not programmed",
        ),
        DROP_LB_INCONSISTENT => (
            "drop-lb-inconsistent",
            "the service has backends but a backend slot is missing (map being rewritten or corrupt)",
        ),
        DROP_ETHERTYPE => (
            "drop-ethertype",
            "a pod sent neither IPv4, IPv6 nor ARP",
        ),
        DROP_ARP_SPOOF => (
            "drop-arp-spoof",
            "a pod's ARP claims an address that is not its own",
        ),
        DROP_NAT_FAILED => (
            "drop-nat-failed",
            "service translation could not rewrite the packet",
        ),
        DROP_SOURCE_SPOOF => (
            "drop-source-spoof",
            "the pod sent from an address that is not its own",
        ),
        DROP_MALFORMED => ("drop-malformed", "truncated or invalid IPv4 header"),
        DROP_VLAN_FOREIGN => (
            "drop-vlan-foreign",
            "a tagged frame none of whose addresses belongs to its VLAN (or to a VLAN this node carries)",
        ),
        DROP_VLAN_PUSH_FAILED => (
            "drop-vlan-push-failed",
            "the kernel refused to push a VLAN tag",
        ),
        DROP_REDIRECT_FAILED => (
            "drop-redirect-failed",
            "the redirect helper refused the packet",
        ),
        _ => ("unknown", "unknown reason code"),
    }
}

/// The program an event came from (`PROG_*` in bpf/lib/common.h).
pub fn program(code: u8) -> &'static str {
    match code {
        1 => "from-container",
        2 => "from-netdev",
        3 => "to-netdev",
        4 => "tunnel-encap",
        5 => "tunnel-decap",
        6 => "to-container",
        _ => "?",
    }
}

pub fn is_drop(code: u8) -> bool {
    code >= 128
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_code_in_the_header_has_a_name() {
        let header = include_str!("../../../bpf/lib/reasons.h");
        for line in header.lines().filter(|l| l.starts_with("#define")) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (name, Some(Ok(code))) = (parts[1], parts.get(2).map(|v| v.parse::<u16>())) else {
                continue;
            };
            if name.ends_with("_MAX_FORWARD") || name.ends_with("_COUNT") {
                continue;
            }
            assert_ne!(
                super::describe(code as u8).0,
                "unknown",
                "{name} = {code} has no name in reason.rs"
            );
        }
    }
}
