#!/usr/bin/env bash
# Starts a local three-member geobuk store cluster (etcd's Procfile layout):
#   infra1: clients http://127.0.0.1:2379,  peers http://127.0.0.1:2380
#   infra2: clients http://127.0.0.1:22379, peers http://127.0.0.1:22380
#   infra3: clients http://127.0.0.1:32379, peers http://127.0.0.1:32380
# Data and logs go to $GEOBUK_CLUSTER_DIR (default ./geobuk-cluster/<name>).
# Ctrl-C (or SIGTERM) stops all three. Extra arguments go to every member.
# Use it with:  etcdctl --endpoints=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 member list
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
if [[ -z "${GEOBUK_BIN:-}" ]]; then
  cargo build --release --bin geobuk
  GEOBUK_BIN="$CARGO_TARGET_DIR/release/geobuk"
fi
dir="${GEOBUK_CLUSTER_DIR:-geobuk-cluster}"
mkdir -p "$dir"
cluster="infra1=http://127.0.0.1:2380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380"
token="${GEOBUK_CLUSTER_TOKEN:-geobuk-local-cluster}"
pids=()
stop() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM
for i in 1 2 3; do
  name="infra$i"
  if [[ $i == 1 ]]; then port=2379; else port="${i}2379"; fi
  peer=$((port + 1))
  "$GEOBUK_BIN" store --name "$name" --data-dir "$dir/$name" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-token "$token" --initial-cluster-state new \
    "$@" >>"$dir/$name.log" 2>&1 &
  pids+=($!)
  echo "started $name (pid $!): clients http://127.0.0.1:$port, peers http://127.0.0.1:$peer, log $dir/$name.log"
done
echo "etcdctl --endpoints=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 endpoint status -w table"
wait -n "${pids[@]}" || true
echo "a member exited; stopping the cluster (see the logs in $dir)"
