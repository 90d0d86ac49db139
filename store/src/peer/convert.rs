//! Conversions between openraft's RPC messages and the peer protocol. Input
//! from a peer is untrusted: every decode returns an error, never panics.

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult, VoteRequest, VoteResponse,
};

use crate::proto::peerpb as pb;
use crate::proto::raftlog;
use crate::raft::codec::{self, CodecError};
use crate::raft::types::{TypeConfig, Vote};

fn need_vote(v: Option<&raftlog::Vote>, what: &'static str) -> Result<Vote, CodecError> {
    v.map(codec::vote_from_pb).ok_or(CodecError::MissingField(what))
}

/// openraft → wire.
pub fn vote_request_to_pb(route: Option<pb::Route>, r: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        route,
        vote: Some(codec::vote_to_pb(&r.vote)),
        last_log_id: r.last_log_id.as_ref().map(codec::log_id_to_pb),
        leadership_transfer: r.leadership_transfer,
    }
}

/// wire → openraft.
pub fn vote_request_from_pb(r: &pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, CodecError> {
    let mut req = VoteRequest::new(
        need_vote(r.vote.as_ref(), "VoteRequest.vote")?,
        r.last_log_id.as_ref().map(codec::log_id_from_pb),
    );
    req.leadership_transfer = r.leadership_transfer;
    Ok(req)
}

/// openraft → wire.
pub fn vote_reply_to_pb(r: &VoteResponse<TypeConfig>) -> pb::VoteReply {
    pb::VoteReply {
        vote: Some(codec::vote_to_pb(&r.vote)),
        granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(codec::log_id_to_pb),
    }
}

/// wire → openraft.
pub fn vote_reply_from_pb(r: &pb::VoteReply) -> Result<VoteResponse<TypeConfig>, CodecError> {
    Ok(VoteResponse::new(
        need_vote(r.vote.as_ref(), "VoteReply.vote")?,
        r.last_log_id.as_ref().map(codec::log_id_from_pb),
        r.granted,
    ))
}

/// openraft → wire.
pub fn append_request_to_pb(route: Option<pb::Route>, r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendRequest {
    pb::AppendRequest {
        route,
        vote: Some(codec::vote_to_pb(&r.vote)),
        prev_log_id: r.prev_log_id.as_ref().map(codec::log_id_to_pb),
        entries: r.entries.iter().map(codec::entry_to_pb).collect(),
        leader_commit: r.leader_commit.as_ref().map(codec::log_id_to_pb),
    }
}

/// wire → openraft.
pub fn append_request_from_pb(r: pb::AppendRequest) -> Result<AppendEntriesRequest<TypeConfig>, CodecError> {
    let entries = r.entries.into_iter().map(codec::entry_from_pb).collect::<Result<Vec<_>, _>>()?;
    Ok(AppendEntriesRequest {
        vote: need_vote(r.vote.as_ref(), "AppendRequest.vote")?,
        prev_log_id: r.prev_log_id.as_ref().map(codec::log_id_from_pb),
        entries,
        leader_commit: r.leader_commit.as_ref().map(codec::log_id_from_pb),
    })
}

/// openraft → wire.
pub fn append_reply_to_pb(r: &AppendEntriesResponse<TypeConfig>) -> pb::AppendReply {
    use pb::append_reply::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(raftlog::Blank {}),
        AppendEntriesResponse::PartialSuccess(m) => {
            R::Partial(pb::PartialSuccess { matching: m.as_ref().map(codec::log_id_to_pb) })
        }
        AppendEntriesResponse::Conflict => R::Conflict(raftlog::Blank {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(codec::vote_to_pb(v)),
    };
    pb::AppendReply { result: Some(result) }
}

/// wire → openraft.
pub fn append_reply_from_pb(r: &pb::AppendReply) -> Result<AppendEntriesResponse<TypeConfig>, CodecError> {
    use pb::append_reply::Result as R;
    Ok(match r.result.as_ref().ok_or(CodecError::MissingField("AppendReply.result"))? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::Partial(p) => AppendEntriesResponse::PartialSuccess(p.matching.as_ref().map(codec::log_id_from_pb)),
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(codec::vote_from_pb(v)),
    })
}

/// openraft → wire, one reply of a pipelined append stream.
pub fn stream_reply_to_pb(r: &StreamAppendResult<TypeConfig>) -> pb::StreamAppendReply {
    use pb::stream_append_reply::Result as R;
    let result = match r {
        Ok(matching) => R::Matched(pb::PartialSuccess { matching: matching.as_ref().map(codec::log_id_to_pb) }),
        Err(StreamAppendError::Conflict(at)) => R::Conflict(codec::log_id_to_pb(at)),
        Err(StreamAppendError::HigherVote(v)) => R::HigherVote(codec::vote_to_pb(v)),
    };
    pb::StreamAppendReply { result: Some(result) }
}

/// wire → openraft, one reply of a pipelined append stream.
pub fn stream_reply_from_pb(r: &pb::StreamAppendReply) -> Result<StreamAppendResult<TypeConfig>, CodecError> {
    use pb::stream_append_reply::Result as R;
    Ok(match r.result.as_ref().ok_or(CodecError::MissingField("StreamAppendReply.result"))? {
        R::Matched(m) => Ok(m.matching.as_ref().map(codec::log_id_from_pb)),
        R::Conflict(at) => Err(StreamAppendError::Conflict(codec::log_id_from_pb(at))),
        R::HigherVote(v) => Err(StreamAppendError::HigherVote(codec::vote_from_pb(v))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::codec::tests::log_id;

    #[test]
    fn raft_messages_round_trip_and_reject_missing_fields() {
        let vote = Vote::new(3, 2);
        let req = VoteRequest::<TypeConfig>::new(vote, Some(log_id(2, 1, 9)));
        let back = vote_request_from_pb(&vote_request_to_pb(None, &req)).unwrap();
        assert_eq!((back.vote, back.last_log_id), (req.vote, req.last_log_id));
        let resp = VoteResponse::<TypeConfig>::new(vote, None, true);
        assert_eq!(vote_reply_from_pb(&vote_reply_to_pb(&resp)).unwrap(), resp);
        for r in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(1, 1, 4))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote),
        ] {
            assert_eq!(append_reply_from_pb(&append_reply_to_pb(&r)).unwrap(), r);
        }
        assert!(vote_request_from_pb(&pb::VoteRequest::default()).is_err());
        assert!(append_request_from_pb(pb::AppendRequest::default()).is_err());
        assert!(append_reply_from_pb(&pb::AppendReply::default()).is_err());
        for r in [
            Ok(Some(log_id(2, 1, 9))),
            Ok(None),
            Err(StreamAppendError::Conflict(log_id(2, 1, 4))),
            Err(StreamAppendError::HigherVote(Vote::new(5, 3))),
        ] {
            assert_eq!(stream_reply_from_pb(&stream_reply_to_pb(&r)).unwrap(), r);
        }
        assert!(stream_reply_from_pb(&pb::StreamAppendReply::default()).is_err());
        let bad_entry = pb::AppendRequest {
            vote: Some(codec::vote_to_pb(&vote)),
            entries: vec![raftlog::LogEntry::default()],
            ..Default::default()
        };
        assert!(append_request_from_pb(bad_entry).is_err());
    }
}
