//! BGP (Calico's BGP mode): no routes from the cluster objects at all. The
//! nodes tell each other their pod blocks over a BGP full mesh, and the
//! [`crate::reconcile::bgp`] reconciler installs what the speaker learns.
//! Like routed mode, it forwards natively, so it clears an overlay's
//! leftovers the same way.

use super::{CrossNode, Plan};
use futures::future::BoxFuture;
use strait_model::routes::NodeRoute;
use strait_netlink::{Netlink, Route};

pub struct Bgp {
    pub(super) routed: super::routed::Routed,
}

impl CrossNode for Bgp {
    fn name(&self) -> &'static str {
        "bgp"
    }

    fn prepare<'a>(
        &'a mut self,
        nl: &'a Netlink,
        plan: &'a Plan<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        self.routed.prepare(nl, plan)
    }

    fn routes(&self, _peers: &[NodeRoute]) -> Vec<Route> {
        vec![]
    }
}
