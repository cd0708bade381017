//! eni: Terway's ENI multi-IP (seed 000). Pods hold secondary addresses
//! of the node's ENIs and the VPC routes each address to its ENI, so no
//! node routes another's pods: this backend has no routes. The ENIs, their
//! tables and the per-pod rules are the eni-pool reconciler's
//! ([`crate::reconcile::eni_pool`]); here other modes' leftovers go.

use super::{CrossNode, Plan};
use futures::future::BoxFuture;
use strait_model::routes::NodeRoute;
use strait_netlink::{Netlink, Route};

pub struct EniMode {
    pub(super) ipip: super::IpipLeftovers,
    /// ENI-Trunking tags member pods' traffic on the trunk ENI with the
    /// VLAN map: then only macvlan's ports are another mode's leftovers.
    pub(super) trunk: bool,
}

impl CrossNode for EniMode {
    fn name(&self) -> &'static str {
        "eni"
    }

    fn prepare<'a>(
        &'a mut self,
        nl: &'a Netlink,
        _plan: &'a Plan<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            self.ipip.remove(nl).await?;
            if self.trunk {
                self.ipip.remove_macvlan(nl).await?;
            } else {
                self.ipip.remove_vlan(nl).await?;
            }
            Ok(vec![])
        })
    }

    /// Nothing in main: the VPC carries pod traffic between nodes.
    fn routes(&self, _peers: &[NodeRoute]) -> Vec<Route> {
        vec![]
    }
}
