//! The store's errors, each mapped to the gRPC code and exact message etcd
//! uses, because etcd clients recognise errors by their message text.

use tonic::{Code, Status};

/// An error a client can see. Messages are etcd's, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: not capable")]
    NotCapable,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// A failure of the server itself (storage, a broken invariant).
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl StoreError {
    /// The gRPC code etcd sends with this error.
    pub fn code(&self) -> Code {
        use StoreError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey | RequestTooLarge => {
                Code::InvalidArgument
            }
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            TooManyRequests => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist
            | NotLeader
            | BadLeaderTransferee
            | NotCapable
            | PeerUrlExists
            | MemberExists
            | TooManyLearners
            | MemberNotLearner
            | LearnerNotReady
            | NotEnoughStartedMembers => Code::FailedPrecondition,
            NoLeader | LeaderChanged | Stopped | Timeout | LeaderTransferTimeout | Unhealthy => Code::Unavailable,
            Internal(_) => Code::Internal,
        }
    }

    /// The error whose etcd message is `msg` (how a rejection travels between
    /// members and sits in the dedup table); unknown text becomes `Internal`.
    pub fn from_message(msg: &str) -> Self {
        use StoreError::*;
        let known = [
            EmptyKey,
            KeyNotFound,
            ValueProvided,
            LeaseProvided,
            TooManyOps,
            DuplicateKey,
            Compacted,
            FutureRev,
            RequestTooLarge,
            TooManyRequests,
            LeaseNotFound,
            LeaseExist,
            LeaseTtlTooLarge,
            NoLeader,
            NotLeader,
            LeaderChanged,
            Stopped,
            Timeout,
            MemberNotFound,
            BadLeaderTransferee,
            NotCapable,
            PeerUrlExists,
            MemberExists,
            TooManyLearners,
            MemberNotLearner,
            LearnerNotReady,
            NotEnoughStartedMembers,
            Unhealthy,
            LeaderTransferTimeout,
        ];
        known
            .into_iter()
            .find(|e| e.to_string() == msg)
            .unwrap_or_else(|| Internal(msg.strip_prefix("etcdserver: ").unwrap_or(msg).to_string()))
    }

    /// Wraps a storage failure.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        StoreError::Internal(e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<crate::engine::EngineError> for StoreError {
    fn from(e: crate::engine::EngineError) -> Self {
        StoreError::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_match_etcd() {
        let s: Status = StoreError::Compacted.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
        let s: Status = StoreError::LeaseNotFound.into();
        assert_eq!((s.code(), s.message()), (Code::NotFound, "etcdserver: requested lease not found"));
        let s: Status = StoreError::DuplicateKey.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let s: Status = StoreError::Unhealthy.into();
        assert_eq!((s.code(), s.message()), (Code::Unavailable, "etcdserver: unhealthy cluster"));
        let unhealthy = [StoreError::Unhealthy, StoreError::NotEnoughStartedMembers];
        for e in [StoreError::LeaseNotFound, StoreError::Compacted, StoreError::Internal("disk on fire".into())]
            .into_iter()
            .chain(unhealthy)
        {
            assert_eq!(StoreError::from_message(&e.to_string()), e);
        }
    }
}
