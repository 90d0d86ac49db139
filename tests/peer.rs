//! The peer protocol refuses what it should not accept, without harm to the member: a
//! replication stream whose request names another cluster, or cannot be decoded, ends with the
//! gRPC status that says why, and the member goes on serving.

mod common;

use anyhow::{Context, Result, ensure};
use common::{TestServer, is_etcd, within};
use store::proto::peerpb::{self as pb, peer_client::PeerClient};
use tonic::Code;

/// Sends `request` on a fresh replication stream and returns the status the stream ends with.
async fn stream_append_status(server: &TestServer, request: pb::AppendRequest) -> Result<tonic::Status> {
    let mut client = PeerClient::connect(server.peer_url()).await.context("dial the peer port")?;
    let mut replies = client.stream_append(futures::stream::iter([request])).await?.into_inner();
    match within("the stream's end", replies.message()).await? {
        Err(status) => Ok(status),
        Ok(reply) => anyhow::bail!("expected the stream to fail, got {reply:?}"),
    }
}

#[tokio::test]
async fn replication_streams_refuse_bad_requests_and_the_member_goes_on() -> Result<()> {
    if is_etcd() {
        return Ok(());
    }
    let server = TestServer::start().await?;
    let mut client = server.client().await?;
    let header = client.put("before", "1", None).await?.header().cloned().context("header")?;
    let route = pb::Route { cluster_id: header.cluster_id(), from: 7, to: header.member_id() };

    let other_cluster = pb::Route { cluster_id: header.cluster_id() ^ 1, ..route };
    let wrong = pb::AppendRequest { route: Some(other_cluster), ..Default::default() };
    let status = stream_append_status(&server, wrong).await?;
    ensure!(status.code() == Code::FailedPrecondition, "other cluster: {status:?}");
    ensure!(status.message().contains("cluster ID mismatch"), "other cluster: {status:?}");

    // Routed right but without the leader's vote: undecodable.
    let malformed = pb::AppendRequest { route: Some(route), ..Default::default() };
    let status = stream_append_status(&server, malformed).await?;
    ensure!(status.code() == Code::InvalidArgument, "malformed: {status:?}");

    client.put("after", "2", None).await?;
    let got = client.get("after", None).await?;
    ensure!(common::values(got.kvs()) == ["2"], "the member still serves writes");
    Ok(())
}
