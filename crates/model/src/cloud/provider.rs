//! What strait's agent asks of a cloud: ENIs and their private addresses,
//! and member ENIs on a trunk. The lab's VPC emulator is one
//! implementation; an Alibaba Cloud one would map each method to the ECS
//! API call named beside it. Quotas and exhausted vSwitches are errors of
//! their own kind, so the agent can tell a pod exactly what is wrong
//! (Terway's users meet a stuck "IpNotEnough").

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One ENI as the cloud describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Eni {
    /// "eni-…".
    pub id: String,
    pub mac: String,
    /// The node (instance) it is attached to; None when detached.
    pub node: Option<String>,
    pub vswitch: String,
    pub primary_ip: IpAddr,
    /// Secondary private addresses (what ENI multi-IP pods get).
    pub secondary_ips: Vec<IpAddr>,
    pub security_groups: Vec<String>,
    pub kind: EniKind,
    /// Attachment order on the node: 0 is the primary ENI (eth0).
    pub device_index: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum EniKind {
    /// The node's own, eth0; pods never use it.
    Primary,
    /// A secondary ENI whose secondary addresses pods use (ENI multi-IP).
    Secondary,
    /// A trunk ENI carrying member ENIs by VLAN id (ENI-Trunking).
    Trunk,
    /// A member ENI of `trunk`, reached through it tagged `vlan`.
    Member { trunk: String, vlan: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum CloudError {
    /// The node has as many ENIs as its instance type allows.
    #[error("node {node} has {limit} ENIs, its instance type's limit; delete pods or use a larger instance type")]
    EniQuota { node: String, limit: usize },
    /// The ENI holds as many addresses as allowed.
    #[error("ENI {eni} holds {limit} private addresses, the limit per ENI")]
    IpQuota { eni: String, limit: usize },
    /// The trunk carries as many member ENIs as allowed.
    #[error("trunk ENI {trunk} carries {limit} member ENIs, the limit")]
    MemberQuota { trunk: String, limit: usize },
    /// The vSwitch has no free address (Alibaba's
    /// InvalidVSwitchId.IpNotEnough).
    #[error("vSwitch {vswitch} ({cidr}) has no free address (IpNotEnough); add a vSwitch or free addresses")]
    IpNotEnough { vswitch: String, cidr: String },
    #[error("{what} {id} does not exist")]
    NotFound { what: String, id: String },
    /// The request contradicts the ENI's state (detaching a primary ENI,
    /// deleting an attached one, ...).
    #[error("{message}")]
    Invalid { message: String },
    /// The cloud could not be reached or failed inside.
    #[error("cloud API: {message}")]
    Unavailable { message: String },
}

/// The calls strait makes. Each is one cloud API request; the real API's
/// name is beside it.
pub trait EniProvider: Send + Sync {
    /// The node's ENIs (DescribeNetworkInterfaces, InstanceId=node).
    fn describe(&self, node: &str) -> Result<Vec<Eni>, CloudError>;

    /// A new ENI in `vswitch` with `security_groups`, attached to `node`
    /// (CreateNetworkInterface, then AttachNetworkInterface). `trunk`
    /// makes it a trunk ENI (CreateNetworkInterface
    /// InstanceType=Trunk).
    fn create_eni(
        &self,
        node: &str,
        vswitch: &str,
        security_groups: &[String],
        trunk: bool,
    ) -> Result<Eni, CloudError>;

    /// Detach and delete an ENI, releasing its addresses
    /// (DetachNetworkInterface, then DeleteNetworkInterface).
    fn delete_eni(&self, eni: &str) -> Result<(), CloudError>;

    /// `count` more secondary addresses on `eni`
    /// (AssignPrivateIpAddresses, SecondaryPrivateIpAddressCount).
    fn assign_ips(&self, eni: &str, count: usize) -> Result<Vec<IpAddr>, CloudError>;

    /// Give secondary addresses back (UnassignPrivateIpAddresses).
    fn unassign_ips(&self, eni: &str, ips: &[IpAddr]) -> Result<(), CloudError>;

    /// A member ENI on `trunk` with its own vSwitch and groups; the cloud
    /// chooses its VLAN id (CreateNetworkInterface, then
    /// AttachNetworkInterface with TrunkNetworkInstanceId=trunk; the VLAN
    /// id is in DescribeNetworkInterfaces' Attachment.DeviceIndex).
    fn create_member(
        &self,
        trunk: &str,
        vswitch: &str,
        security_groups: &[String],
    ) -> Result<Eni, CloudError>;

    /// The node's ENI limits, from its instance type
    /// (DescribeInstanceTypes: EniQuantity, EniPrivateIpAddressQuantity,
    /// EniTrunkSupported).
    fn limits(&self, node: &str) -> Result<super::Quota, CloudError>;

    /// A vSwitch: its CIDR, hence its gateway (DescribeVSwitches).
    fn vswitch(&self, id: &str) -> Result<super::VSwitchSpec, CloudError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_crosses_json_and_back() {
        for e in [
            CloudError::EniQuota {
                node: "n1".into(),
                limit: 3,
            },
            CloudError::IpNotEnough {
                vswitch: "vsw-a".into(),
                cidr: "198.18.32.0/28".into(),
            },
            CloudError::Invalid {
                message: "no".into(),
            },
            CloudError::Unavailable {
                message: "down".into(),
            },
        ] {
            let j = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<CloudError>(&j).unwrap(), e, "{j}");
        }
    }
}
