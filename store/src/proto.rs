//! Generated protobuf types: etcd's v3 wire API and geobuk's Raft log encoding.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's `mvccpb` package: KeyValue and Event.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` package: the gRPC services and their messages.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// geobuk's own packages, nested as protobuf packages so generated paths resolve.
pub mod geobuk {
    /// Raft log encoding.
    pub mod raftlog {
        /// Version 1 of the Raft log encoding.
        pub mod v1 {
            tonic::include_proto!("geobuk.raftlog.v1");
        }
    }
    /// The member-to-member protocol.
    pub mod peer {
        /// Version 1 of the peer protocol.
        pub mod v1 {
            tonic::include_proto!("geobuk.peer.v1");
        }
    }
}

/// geobuk's member-to-member protocol.
pub use geobuk::peer::v1 as peerpb;

/// geobuk's Raft log entries, votes, membership and state-machine commands.
pub use geobuk::raftlog::v1 as raftlog;
