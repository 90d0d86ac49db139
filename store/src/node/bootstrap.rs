//! Who this member is: its member and cluster ids, derived at first start
//! from etcd's bootstrap flags (--initial-cluster, --initial-cluster-state,
//! --initial-cluster-token) or learned from a running cluster it joins, then
//! persisted. Later starts read them back and ignore the bootstrap flags, as
//! etcd does, except that an explicit token must match.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::{ClusterState, StoreConfig};
use crate::engine::{Engine, cf};
use crate::peer::PeerClients;
use crate::proto::peerpb as pb;
use crate::raft::types::MemberInfo;

/// How long a start-up question to a peer (bootstrapped? who am I?) may take.
const PEER_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

const META_MEMBER_ID: &[u8] = b"member_id";
const META_CLUSTER_ID: &[u8] = b"cluster_id";
const META_TOKEN: &[u8] = b"cluster_token";
/// Present once this member saw its own removal committed: its data dir must not serve again.
const META_REMOVED: &[u8] = b"removed";

/// Errors deciding this member's identity; each is a refusal to start.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// --name is not in --initial-cluster.
    #[error("couldn't find local name {0:?} in the initial cluster configuration")]
    UnknownName(String),
    /// --initial-advertise-peer-urls disagrees with this member's --initial-cluster entry.
    #[error("--initial-cluster has {name}={cluster_urls:?} but --initial-advertise-peer-urls is {advertised:?}")]
    PeerUrlMismatch {
        /// --name.
        name: String,
        /// Its URLs in --initial-cluster.
        cluster_urls: Vec<String>,
        /// --initial-advertise-peer-urls.
        advertised: Vec<String>,
    },
    /// The data dir belongs to a cluster bootstrapped with another token.
    #[error(
        "--initial-cluster-token {given:?} does not match the cluster token {stored:?} this data dir was bootstrapped with"
    )]
    TokenMismatch {
        /// The flag.
        given: String,
        /// What the data dir holds.
        stored: String,
    },
    /// A peer runs a cluster with another token.
    #[error("cluster ID mismatch: {0}")]
    ClusterIdMismatch(String),
    /// The member's data dir was wiped but the cluster knows it as started.
    #[error(
        "member {0:x} has already been bootstrapped; start it with its old data dir, or remove it and add it back as a new member"
    )]
    AlreadyBootstrapped(u64),
    /// Joining: no reachable member knows this member's peer URLs.
    #[error("no member with peer URLs {0:?} in the running cluster (add it with MemberAdd first): {1}")]
    NotAdded(Vec<String>, String),
    /// This member saw its own removal committed before it stopped (etcd's message).
    #[error(
        "member {0:x}: the member has been permanently removed from the cluster; start a new member with a new data dir (add it with MemberAdd first)"
    )]
    Removed(u64),
    /// Storage failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
}

/// This member's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The member id.
    pub member_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
}

/// What Raft must do at this start.
#[derive(Debug)]
pub enum Bootstrap {
    /// The data dir already holds a member: just start.
    Restart,
    /// A new cluster: initialize Raft with these members.
    New(BTreeMap<u64, MemberInfo>),
    /// Joining a running cluster: wait for the leader to replicate to us.
    Join,
}

/// 64-bit FNV-1a: a stable hash for member and cluster ids.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xFFu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// etcd derives a member id from its sorted peer URLs and the cluster token.
pub fn member_id_for(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    fnv1a(&[urls.join(",").as_bytes(), token.as_bytes()]).max(1)
}

/// The cluster id: a hash of the sorted initial member ids and the token.
pub fn cluster_id_for(member_ids: &BTreeSet<u64>, token: &str) -> u64 {
    let ids: Vec<u8> = member_ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a(&[&ids, token.as_bytes()]).max(1)
}

/// The initial members from --initial-cluster, keyed by derived id.
pub fn initial_members(config: &StoreConfig) -> BTreeMap<u64, MemberInfo> {
    config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let info = MemberInfo { name: name.clone(), peer_urls: urls.clone(), client_urls: Vec::new() };
            (member_id_for(urls, &config.initial_cluster_token), info)
        })
        .collect()
}

fn read_u64(engine: &Engine, key: &[u8]) -> Result<Option<u64>, BootstrapError> {
    let raw = engine.db().get_cf(engine.cf(cf::RAFT_META), key)?;
    Ok(raw.and_then(|v| v.as_slice().try_into().ok()).map(u64::from_be_bytes))
}

fn persist(engine: &Engine, id: &Identity, token: &str) -> Result<(), BootstrapError> {
    let meta = engine.cf(cf::RAFT_META);
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(meta, META_MEMBER_ID, id.member_id.to_be_bytes());
    batch.put_cf(meta, META_CLUSTER_ID, id.cluster_id.to_be_bytes());
    batch.put_cf(meta, META_TOKEN, token.as_bytes());
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    engine.db().write_opt(batch, &opts)?;
    Ok(())
}

/// Records, durably, that this member has been removed from the cluster: a restart with this
/// data dir is refused ([`BootstrapError::Removed`]), as etcd refuses a removed member. Without
/// it the member started, no longer in any configuration, and served nothing and stale reads.
pub fn record_removed(engine: &Engine) -> Result<(), BootstrapError> {
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    engine.db().put_cf_opt(engine.cf(cf::RAFT_META), META_REMOVED, [], &opts)?;
    Ok(())
}

/// The token the data dir was bootstrapped with (none for a data dir from
/// before tokens were stored).
pub fn stored_token(engine: &Engine) -> Result<Option<String>, BootstrapError> {
    let raw = engine.db().get_cf(engine.cf(cf::RAFT_META), META_TOKEN)?;
    Ok(raw.map(|s| String::from_utf8_lossy(&s).into_owned()))
}

/// Writes the identity of a member restored from a backup (`snapshot restore`).
pub fn persist_restored(engine: &Engine, id: &Identity, token: &str) -> Result<(), BootstrapError> {
    persist(engine, id, token)
}

/// Decides this member's identity and what Raft must do, refusing to start
/// when the flags and the data dir or the running cluster disagree.
pub async fn resolve(engine: &Engine, config: &StoreConfig) -> Result<(Identity, Bootstrap), BootstrapError> {
    if let (Some(member_id), Some(cluster_id)) = (read_u64(engine, META_MEMBER_ID)?, read_u64(engine, META_CLUSTER_ID)?)
    {
        let stored = engine.db().get_cf(engine.cf(cf::RAFT_META), META_TOKEN)?;
        if let Some(stored) = stored.map(|s| String::from_utf8_lossy(&s).into_owned())
            && config.initial_cluster_token_explicit
            && stored != config.initial_cluster_token
        {
            return Err(BootstrapError::TokenMismatch { given: config.initial_cluster_token.clone(), stored });
        }
        if engine.db().get_cf(engine.cf(cf::RAFT_META), META_REMOVED)?.is_some() {
            return Err(BootstrapError::Removed(member_id));
        }
        return Ok((Identity { member_id, cluster_id }, Bootstrap::Restart));
    }
    let Some(my_urls) = config.initial_cluster.get(&config.name) else {
        return Err(BootstrapError::UnknownName(config.name.clone()));
    };
    let sorted = |v: &[String]| -> BTreeSet<String> { v.iter().cloned().collect() };
    if sorted(my_urls) != sorted(&config.initial_advertise_peer_urls) {
        return Err(BootstrapError::PeerUrlMismatch {
            name: config.name.clone(),
            cluster_urls: my_urls.clone(),
            advertised: config.initial_advertise_peer_urls.clone(),
        });
    }
    let token = &config.initial_cluster_token;
    let others: Vec<String> = config
        .initial_cluster
        .iter()
        .filter(|(name, _)| **name != config.name)
        .flat_map(|(_, urls)| urls.iter().cloned())
        .collect();
    let clients = PeerClients::new(0, 0, config.peer_dial_overrides.clone());
    let (identity, bootstrap) = match config.initial_cluster_state {
        ClusterState::New => {
            let members = initial_members(config);
            let member_id = member_id_for(my_urls, token);
            let cluster_id = cluster_id_for(&members.keys().copied().collect(), token);
            refuse_if_bootstrapped(&clients, &others, member_id, token).await?;
            (Identity { member_id, cluster_id }, Bootstrap::New(members))
        }
        ClusterState::Existing => (join(&clients, &others, my_urls, token).await?, Bootstrap::Join),
    };
    persist(engine, &identity, token)?;
    Ok((identity, bootstrap))
}

async fn ask(clients: &PeerClients, url: &str, token: &str) -> Result<pb::GetClusterReply, tonic::Status> {
    let mut client = clients.client_for_url(url).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(pb::GetClusterRequest { token: token.to_string() });
    req.set_timeout(PEER_QUERY_TIMEOUT);
    match tokio::time::timeout(PEER_QUERY_TIMEOUT, client.get_cluster(req)).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
    }
}

/// etcd's isMemberBootstrapped: a running peer that knows this member's
/// client URLs has seen it start before, so its data must not be recreated.
async fn refuse_if_bootstrapped(
    clients: &PeerClients,
    others: &[String],
    member_id: u64,
    token: &str,
) -> Result<(), BootstrapError> {
    for url in others {
        let Ok(reply) = ask(clients, url, token).await else { continue };
        if reply.members.iter().any(|m| m.id == member_id && !m.client_ur_ls.is_empty()) {
            return Err(BootstrapError::AlreadyBootstrapped(member_id));
        }
    }
    Ok(())
}

/// Finds this member (added with MemberAdd) in a running cluster.
async fn join(
    clients: &PeerClients,
    others: &[String],
    my_urls: &[String],
    token: &str,
) -> Result<Identity, BootstrapError> {
    let mine: BTreeSet<&String> = my_urls.iter().collect();
    let mut last = String::from("no other member in --initial-cluster");
    for url in others {
        match ask(clients, url, token).await {
            Ok(reply) => {
                let found = reply.members.iter().find(|m| m.peer_ur_ls.iter().collect::<BTreeSet<_>>() == mine);
                match found {
                    Some(m) => return Ok(Identity { member_id: m.id, cluster_id: reply.cluster_id }),
                    None => last = format!("{url} does not list it"),
                }
            }
            Err(s) if s.message().contains("cluster ID mismatch") => {
                return Err(BootstrapError::ClusterIdMismatch(s.message().to_string()));
            }
            Err(s) => last = format!("{url}: {}", s.message()),
        }
    }
    Err(BootstrapError::NotAdded(my_urls.to_vec(), last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = member_id_for(&["http://a:2380".into(), "http://b:2380".into()], "t");
        let b = member_id_for(&["http://b:2380".into(), "http://a:2380".into()], "t");
        assert_eq!(a, b);
        assert_ne!(a, member_id_for(&["http://a:2380".into(), "http://b:2380".into()], "u"));
        // Golden: ids are persisted and shared by every member, so the derivation must not change.
        assert_eq!(member_id_for(&["http://127.0.0.1:2380".into()], "etcd-cluster"), 0x0576_6f91_5e00_dabc);
    }
}
