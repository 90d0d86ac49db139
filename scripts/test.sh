#!/usr/bin/env bash
# Runs the whole test suite: unit, property, integration and etcdctl tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
# A failing integration test returns an anyhow error whose context names what failed; its
# backtrace (RUST_BACKTRACE=1 on CI machines) would push the member logs printed before it
# out of a runner's output tail. Panics keep their backtraces.
export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"
cargo test --workspace --all-targets "$@"
