//! The Lease service. Grants and revokes are replicated; keep-alives renew
//! the leader's in-memory clock only, as in etcd.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Ctx, fill};
use crate::error::StoreError;
use crate::limits::{LEASE_KEEPALIVE_RESPONSES_BUFFERED_MAX, LEASE_TTL_MAX_SECS};
use crate::node::require_leader::LeaderGuard;
use crate::proto::etcdserverpb::{self as pb, lease_server::Lease};
use crate::proto::raftlog::{self, command::Op};
use crate::raft::apply;
use crate::raft::types::Applied;

/// A fresh positive lease id. Chosen by the member that receives the grant,
/// before proposing, so apply stays deterministic.
fn new_lease_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() >> 1).max(1) as i64
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for Ctx {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let mut g = req.into_inner();
        if g.ttl > LEASE_TTL_MAX_SECS {
            return Err(StoreError::LeaseTtlTooLarge.into());
        }
        g.ttl = g.ttl.max(self.node.config.min_lease_ttl_secs());
        let chosen = g.id != 0;
        loop {
            if !chosen {
                g.id = new_lease_id();
            }
            match self.node.propose(Op::LeaseGrant(g)).await {
                Ok(Applied::LeaseGrant(mut resp)) => {
                    fill(&self.node, &mut resp.header);
                    return Ok(Response::new(resp));
                }
                Err(StoreError::LeaseExist) if !chosen => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => return Err(StoreError::Internal("unexpected apply result for lease grant".into()).into()),
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = req.into_inner().id;
        let op = Op::LeaseRevoke(raftlog::LeaseRevoke { ids: vec![id], expired: false });
        match self.node.propose(op).await? {
            Applied::LeaseRevoke(mut resp) => {
                fill(&self.node, &mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(StoreError::Internal("unexpected apply result for lease revoke".into()).into()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut leader = LeaderGuard::open(&self.node, req.metadata())?;
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(LEASE_KEEPALIVE_RESPONSES_BUFFERED_MAX);
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                let ka = tokio::select! {
                    msg = input.message() => match msg {
                        Ok(Some(ka)) => ka,
                        Ok(None) | Err(_) => return,
                    },
                    _ = leader.lost() => {
                        let _ = tx.send(Err(StoreError::NoLeader.into())).await;
                        return;
                    }
                };
                let ttl = match node.lease_keep_alive(ka.id).await {
                    Ok(ttl) => ttl.unwrap_or(0),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let revision = node.shared.hub.current_revision();
                let resp = pb::LeaseKeepAliveResponse { header: node.header(revision), id: ka.id, ttl };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        let view = self.node.read_view(false).await?;
        let header = self.node.header(view.current);
        let Some((ttl, granted)) = self.node.lease_time_to_live(r.id).await? else {
            return Ok(Response::new(pb::LeaseTimeToLiveResponse { header, id: r.id, ttl: -1, ..Default::default() }));
        };
        let keys = if r.keys {
            apply::keys_of_lease(&self.node.shared.engine, r.id).map_err(StoreError::from)?
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse { header, id: r.id, ttl, granted_ttl: granted, keys }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let view = self.node.read_view(false).await?;
        let leases = self.node.shared.lessor.ids().into_iter().map(|id| pb::LeaseStatus { id }).collect();
        Ok(Response::new(pb::LeaseLeasesResponse { header: self.node.header(view.current), leases }))
    }
}
