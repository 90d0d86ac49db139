//! Generates the etcd v3 wire types and geobuk's Raft log encoding from store/proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos =
        ["proto/etcd/kv.proto", "proto/etcd/rpc.proto", "proto/geobuk/raftlog.proto", "proto/geobuk/peer.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keys and values are shared between watchers and responses without copies.
        .bytes(".")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
