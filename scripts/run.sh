#!/usr/bin/env bash
# Runs one store member with etcd's defaults (127.0.0.1:2379, ./geobuk-data).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
exec cargo run --release --bin geobuk -- store "$@"
