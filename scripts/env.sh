# Sourced by the scripts: one cargo target dir shared by every clone, since a
# cold rocksdb build takes about 20 minutes on a 2-core machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/geobuk-target}"
