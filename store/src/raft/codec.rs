//! Conversions between openraft's Raft types and geobuk's protobuf encoding
//! (`store/proto/geobuk/raftlog.proto`). These bytes are what the Raft log and
//! metadata column families hold, so the encoding is an on-disk contract,
//! pinned by the golden tests below: fields may be added, never renumbered.

use std::collections::{BTreeMap, BTreeSet};

use openraft::EntryPayload;
use openraft::alias::{CommittedLeaderIdOf, LeaderIdOf};
use openraft::errors::MembershipError;
use prost::Message;

use crate::proto::raftlog as pb;
use crate::proto::raftlog::log_entry::Payload;
use crate::raft::types::{CommandBytes, Entry, LogId, MemberInfo, Membership, StoredMembership, TypeConfig, Vote};

/// Why stored or received bytes could not be turned back into a Raft value.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid protobuf message of the expected type.
    #[error("protobuf decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A field our encoder always writes is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// The membership violates openraft's invariants (e.g. a voter without a node).
    #[error("invalid membership: {0}")]
    InvalidMembership(#[from] MembershipError<u64>),
    /// The same node id appears twice in a membership's node list.
    #[error("invalid membership: node {0} listed twice")]
    DuplicateNode(u64),
}

// ---- LogId ---------------------------------------------------------------

pub(crate) fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
    pb::LogId { term: log_id.leader_id.term, node_id: log_id.leader_id.node_id, index: log_id.index }
}

pub(crate) fn log_id_from_pb(p: &pb::LogId) -> LogId {
    let leader_id = CommittedLeaderIdOf::<TypeConfig> { term: p.term, node_id: p.node_id };
    LogId { leader_id, index: p.index }
}

/// Encodes a log id (`raftlog.LogId`).
pub fn encode_log_id(log_id: &LogId) -> Vec<u8> {
    log_id_to_pb(log_id).encode_to_vec()
}

/// Decodes a log id written by [`encode_log_id`].
pub fn decode_log_id(bytes: &[u8]) -> Result<LogId, CodecError> {
    Ok(log_id_from_pb(&pb::LogId::decode(bytes)?))
}

// ---- Vote ----------------------------------------------------------------

pub(crate) fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote { term: vote.leader_id.term, node_id: vote.leader_id.node_id, committed: vote.committed }
}

pub(crate) fn vote_from_pb(p: &pb::Vote) -> Vote {
    let leader_id = LeaderIdOf::<TypeConfig> { term: p.term, node_id: p.node_id };
    Vote { leader_id, committed: p.committed }
}

/// Encodes a vote (`raftlog.Vote`).
pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    vote_to_pb(vote).encode_to_vec()
}

/// Decodes a vote written by [`encode_vote`].
pub fn decode_vote(bytes: &[u8]) -> Result<Vote, CodecError> {
    Ok(vote_from_pb(&pb::Vote::decode(bytes)?))
}

// ---- Membership ----------------------------------------------------------

fn membership_to_pb(m: &Membership) -> pb::Membership {
    // BTreeSet/BTreeMap iterate in id order, so the encoding is deterministic.
    let configs = m.get_joint_config().iter().map(|c| pb::VoterSet { ids: c.iter().copied().collect() }).collect();
    let nodes = m
        .nodes()
        .map(|(id, info)| pb::NodeEntry {
            id: *id,
            info: Some(pb::MemberInfo {
                name: info.name.clone(),
                peer_urls: info.peer_urls.clone(),
                client_urls: info.client_urls.clone(),
            }),
        })
        .collect();
    pb::Membership { configs, nodes }
}

fn membership_from_pb(p: pb::Membership) -> Result<Membership, CodecError> {
    let configs: Vec<BTreeSet<u64>> = p.configs.into_iter().map(|c| c.ids.into_iter().collect()).collect();
    let mut nodes = BTreeMap::new();
    for n in p.nodes {
        let info = n.info.ok_or(CodecError::MissingField("NodeEntry.info"))?;
        let info = MemberInfo { name: info.name, peer_urls: info.peer_urls, client_urls: info.client_urls };
        // A silent overwrite would hide corruption; our encoder never repeats an id.
        if nodes.insert(n.id, info).is_some() {
            return Err(CodecError::DuplicateNode(n.id));
        }
    }
    // `Membership::new` validates (every voter has a node); its error is data, not a bug.
    Ok(Membership::new(configs, nodes)?)
}

pub(crate) fn stored_membership_to_pb(sm: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: sm.log_id().as_ref().map(log_id_to_pb),
        membership: Some(membership_to_pb(sm.membership())),
    }
}

pub(crate) fn stored_membership_from_pb(p: pb::StoredMembership) -> Result<StoredMembership, CodecError> {
    let membership = p.membership.ok_or(CodecError::MissingField("StoredMembership.membership"))?;
    Ok(StoredMembership::new(p.log_id.as_ref().map(log_id_from_pb), membership_from_pb(membership)?))
}

/// Encodes a stored membership (`raftlog.StoredMembership`).
pub fn encode_stored_membership(sm: &StoredMembership) -> Vec<u8> {
    stored_membership_to_pb(sm).encode_to_vec()
}

/// Decodes a stored membership written by [`encode_stored_membership`].
pub fn decode_stored_membership(bytes: &[u8]) -> Result<StoredMembership, CodecError> {
    stored_membership_from_pb(pb::StoredMembership::decode(bytes)?)
}

// ---- Entry ---------------------------------------------------------------

pub(crate) fn entry_to_pb(entry: &Entry) -> pb::LogEntry {
    let payload = match &entry.payload {
        EntryPayload::Blank => Payload::Blank(pb::Blank {}),
        // `Bytes` clone is a refcount bump: the command was encoded once by the proposer.
        EntryPayload::Normal(cmd) => Payload::Normal(cmd.0.clone()),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    pb::LogEntry { log_id: Some(log_id_to_pb(&entry.log_id)), payload: Some(payload) }
}

/// Encodes a log entry (`raftlog.LogEntry`).
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    entry_to_pb(entry).encode_to_vec()
}

/// Decodes a log entry written by [`encode_entry`].
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    entry_from_pb(pb::LogEntry::decode(bytes)?)
}

pub(crate) fn entry_from_pb(p: pb::LogEntry) -> Result<Entry, CodecError> {
    let log_id = p.log_id.as_ref().map(log_id_from_pb).ok_or(CodecError::MissingField("LogEntry.log_id"))?;
    let payload = match p.payload.ok_or(CodecError::MissingField("LogEntry.payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(bytes) => EntryPayload::Normal(CommandBytes(bytes)),
        Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(m)?),
    };
    Ok(Entry { log_id, payload })
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId { leader_id: CommittedLeaderIdOf::<TypeConfig> { term, node_id }, index }
    }

    fn member(name: &str, host: &str) -> MemberInfo {
        MemberInfo {
            name: name.to_owned(),
            peer_urls: vec![format!("http://{host}:2380")],
            client_urls: vec![format!("http://{host}:2379")],
        }
    }

    fn two_voters() -> Membership {
        let nodes = BTreeMap::from([(1, member("n1", "a")), (2, member("n2", "b"))]);
        Membership::new(vec![BTreeSet::from([1, 2])], nodes).expect("valid membership")
    }

    fn entry(payload: EntryPayload<CommandBytes, u64, MemberInfo>) -> Entry {
        Entry { log_id: log_id(3, 1, 7), payload }
    }

    // Golden bytes: if one of these fails, the on-disk format changed. That breaks
    // every existing data directory, so fix the code, not the expected value.

    #[test]
    fn golden_log_id() {
        assert_eq!(hex(&encode_log_id(&log_id(3, 1, 7))), "080310011807");
    }

    #[test]
    fn golden_vote() {
        let vote = Vote { leader_id: LeaderIdOf::<TypeConfig> { term: 5, node_id: 2 }, committed: true };
        assert_eq!(hex(&encode_vote(&vote)), "080510021801");
    }

    #[test]
    fn golden_entry_blank() {
        assert_eq!(hex(&encode_entry(&entry(EntryPayload::Blank))), "0a060803100118071200");
    }

    #[test]
    fn golden_entry_normal() {
        let e = entry(EntryPayload::Normal(CommandBytes(Bytes::from_static(b"abc"))));
        assert_eq!(hex(&encode_entry(&e)), "0a060803100118071a03616263");
    }

    #[test]
    fn golden_entry_membership() {
        let e = entry(EntryPayload::Membership(two_voters()));
        assert_eq!(hex(&encode_entry(&e)), GOLDEN_MEMBERSHIP_ENTRY);
    }

    /// LogEntry{log_id(3,1,7), membership{configs:[{1,2}], nodes: n1@a, n2@b}}, derived by
    /// hand from the proto: `22 56` membership, `0a 04 0a 02 01 02` voter set {1,2} (packed),
    /// then per node `12 26 08 <id> 12 22` + MemberInfo{`0a 02` name, `12 0d` peer, `1a 0d` client}.
    const GOLDEN_MEMBERSHIP_ENTRY: &str = concat!(
        "0a06080310011807",
        "22560a040a020102",
        "1226080112220a026e31120d687474703a2f2f613a323338301a0d687474703a2f2f613a32333739",
        "1226080212220a026e32120d687474703a2f2f623a323338301a0d687474703a2f2f623a32333739",
    );

    #[test]
    fn round_trip_each_payload() {
        let entries = [
            entry(EntryPayload::Blank),
            entry(EntryPayload::Normal(CommandBytes(Bytes::from_static(b"abc")))),
            entry(EntryPayload::Normal(CommandBytes(Bytes::new()))),
            entry(EntryPayload::Membership(two_voters())),
        ];
        for e in entries {
            assert_eq!(decode_entry(&encode_entry(&e)).expect("decode"), e);
        }
    }

    #[test]
    fn round_trip_vote_and_log_id() {
        for committed in [false, true] {
            let vote = Vote { leader_id: LeaderIdOf::<TypeConfig> { term: 9, node_id: 4 }, committed };
            assert_eq!(decode_vote(&encode_vote(&vote)).expect("decode"), vote);
        }
        let id = log_id(u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(decode_log_id(&encode_log_id(&id)).expect("decode"), id);
    }

    #[test]
    fn round_trip_stored_membership() {
        let cases = [
            StoredMembership::default(),
            StoredMembership::new(Some(log_id(2, 1, 10)), two_voters()),
            // Joint config with a learner (node 3 is in no voter set).
            StoredMembership::new(
                None,
                Membership::new(
                    vec![BTreeSet::from([1]), BTreeSet::from([1, 2])],
                    BTreeMap::from([(1, member("n1", "a")), (2, member("n2", "b")), (3, MemberInfo::default())]),
                )
                .expect("valid"),
            ),
        ];
        for sm in cases {
            assert_eq!(decode_stored_membership(&encode_stored_membership(&sm)).expect("decode"), sm);
        }
    }

    #[test]
    fn invalid_membership_is_an_error() {
        // A voter (2) without a node entry: Membership::new rejects it.
        let p = pb::LogEntry {
            log_id: Some(log_id_to_pb(&log_id(1, 1, 1))),
            payload: Some(Payload::Membership(pb::Membership {
                configs: vec![pb::VoterSet { ids: vec![1, 2] }],
                nodes: vec![pb::NodeEntry { id: 1, info: Some(pb::MemberInfo::default()) }],
            })),
        };
        assert!(matches!(decode_entry(&p.encode_to_vec()), Err(CodecError::InvalidMembership(_))));

        let dup = pb::Membership {
            configs: vec![pb::VoterSet { ids: vec![1] }],
            nodes: vec![
                pb::NodeEntry { id: 1, info: Some(pb::MemberInfo::default()) },
                pb::NodeEntry { id: 1, info: Some(pb::MemberInfo::default()) },
            ],
        };
        let sm = pb::StoredMembership { log_id: None, membership: Some(dup) };
        assert!(matches!(decode_stored_membership(&sm.encode_to_vec()), Err(CodecError::DuplicateNode(1))));
    }

    #[test]
    fn missing_fields_are_errors() {
        let no_payload = pb::LogEntry { log_id: Some(log_id_to_pb(&log_id(1, 1, 1))), payload: None };
        assert!(matches!(decode_entry(&no_payload.encode_to_vec()), Err(CodecError::MissingField(_))));
        let no_log_id = pb::LogEntry { log_id: None, payload: Some(Payload::Blank(pb::Blank {})) };
        assert!(matches!(decode_entry(&no_log_id.encode_to_vec()), Err(CodecError::MissingField(_))));
        assert!(matches!(decode_stored_membership(&[]), Err(CodecError::MissingField(_))));
        assert!(matches!(decode_entry(&[0xff]), Err(CodecError::Decode(_))));
    }

    proptest! {
        /// Arbitrary bytes (a torn write, a bit flip, a hostile peer) never panic a decoder.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_entry(&bytes);
            let _ = decode_vote(&bytes);
            let _ = decode_log_id(&bytes);
            let _ = decode_stored_membership(&bytes);
        }

        /// Mutating one byte of a valid encoding never panics either (reaches deeper paths).
        #[test]
        fn mutated_entries_never_panic(pos in 0usize..64, byte in any::<u8>()) {
            let mut bytes = encode_entry(&entry(EntryPayload::Membership(two_voters())));
            let i = pos % bytes.len();
            bytes[i] = byte;
            let _ = decode_entry(&bytes);
        }

        #[test]
        fn normal_entries_round_trip(term in any::<u64>(), node in any::<u64>(), index in any::<u64>(),
                                     data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let e = Entry { log_id: log_id(term, node, index),
                            payload: EntryPayload::Normal(CommandBytes(Bytes::from(data))) };
            prop_assert_eq!(decode_entry(&encode_entry(&e)).expect("decode"), e);
        }
    }
}
