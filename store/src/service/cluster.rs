//! The Cluster service: etcd's membership API over Raft membership changes
//! (executed by the leader, whichever member receives the request).

use tonic::{Request, Response, Status};

use super::Ctx;
use crate::node::bootstrap::fnv1a;
use crate::proto::etcdserverpb::{self as pb, cluster_server::Cluster};
use crate::proto::peerpb::{self as peer, member_change::Change};

/// Checks etcd's rules for peer URLs in MemberAdd and MemberUpdate.
fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(Status::invalid_argument("etcdserver: member peer URLs must not be empty"));
    }
    for url in urls {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(Status::invalid_argument(format!("URL scheme must be http or https: {url}")));
        };
        if rest.trim_end_matches('/').is_empty() {
            return Err(Status::invalid_argument(format!("URL address does not have the form \"host:port\": {url}")));
        }
    }
    Ok(())
}

impl Ctx {
    fn member_header(&self) -> Option<pb::ResponseHeader> {
        self.node.header(self.node.shared.hub.current_revision())
    }
}

#[tonic::async_trait]
impl Cluster for Ctx {
    async fn member_add(&self, r: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = r.into_inner();
        check_peer_urls(&r.peer_ur_ls)?;
        // etcd: a new id from the peer URLs, the cluster and the time, so a re-added member gets a fresh id.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut urls = r.peer_ur_ls.clone();
        urls.sort();
        let id = fnv1a(&[urls.join(",").as_bytes(), &self.node.cluster_id.to_be_bytes(), &now.to_be_bytes()]).max(1);
        let add = peer::AddMember { id, peer_urls: r.peer_ur_ls.clone(), is_learner: r.is_learner };
        let members = self.node.change_members(Change::Add(add)).await?;
        let member = pb::Member {
            id,
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls,
            client_ur_ls: Vec::new(),
            is_learner: r.is_learner,
        };
        Ok(Response::new(pb::MemberAddResponse { header: self.member_header(), member: Some(member), members }))
    }

    async fn member_remove(
        &self,
        r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let members = self.node.change_members(Change::Remove(r.into_inner().id)).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header: self.member_header(), members }))
    }

    async fn member_update(
        &self,
        r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let r = r.into_inner();
        check_peer_urls(&r.peer_ur_ls)?;
        let update = peer::UpdateMember { id: r.id, peer_urls: r.peer_ur_ls };
        let members = self.node.change_members(Change::Update(update)).await?;
        Ok(Response::new(pb::MemberUpdateResponse { header: self.member_header(), members }))
    }

    async fn member_list(&self, r: Request<pb::MemberListRequest>) -> Result<Response<pb::MemberListResponse>, Status> {
        if r.into_inner().linearizable {
            self.node.linearize().await?;
        }
        Ok(Response::new(pb::MemberListResponse { header: self.member_header(), members: self.node.members_pb() }))
    }

    async fn member_promote(
        &self,
        r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let members = self.node.change_members(Change::Promote(r.into_inner().id)).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header: self.member_header(), members }))
    }
}
