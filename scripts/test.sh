#!/usr/bin/env bash
# Runs the whole test suite: unit, property, integration and etcdctl tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo test --workspace --all-targets "$@"
