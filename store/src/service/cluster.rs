//! The Cluster service. A one-member store lists itself; membership changes
//! arrive with the multi-member store and answer Unimplemented until then.

use openraft::async_runtime::WatchReceiver;
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::proto::etcdserverpb::{self as pb, cluster_server::Cluster};

impl Ctx {
    /// Every member in the current Raft membership, as etcd's Member.
    pub(crate) fn members(&self) -> Vec<pb::Member> {
        let metrics = self.node.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| pb::Member {
                id: *id,
                name: info.name.clone(),
                peer_ur_ls: info.peer_urls.clone(),
                client_ur_ls: info.client_urls.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for Ctx {
    async fn member_add(&self, _r: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(Status::unimplemented("membership changes need the multi-member store"))
    }

    async fn member_remove(
        &self,
        _r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(Status::unimplemented("membership changes need the multi-member store"))
    }

    async fn member_update(
        &self,
        _r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented("membership changes need the multi-member store"))
    }

    async fn member_list(
        &self,
        _r: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let header = self.node.header(self.node.shared.hub.current_revision());
        Ok(Response::new(pb::MemberListResponse { header, members: self.members() }))
    }

    async fn member_promote(
        &self,
        _r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(Status::unimplemented("membership changes need the multi-member store"))
    }
}
