#!/usr/bin/env bash
# `nix-store --add` of a 1 GiB tree of 5169 files, Ferrix against real Nix 2.8, each into a
# fresh store on this disk after a sync. See add-tree.py and bench/README.md. Run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-add-tree}
for t in nix-store python3; do
  command -v "$t" >/dev/null || { echo "add-tree.sh: '$t' is missing: apt-get install -y nix-bin python3" >&2; exit 1; }
done
cargo build --release -q -p ferrix-cli
if [ -e "$WORK" ]; then chmod -R u+w "$WORK"; rm -rf "$WORK"; fi
mkdir -p "$WORK/etc" "$WORK/bin"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
printf 'sandbox = false\nbuild-users-group =\nsubstituters =\n' > "$WORK/etc/nix.conf"
target/release/ferrix install-links "$WORK/bin" >/dev/null
FERRIX_BENCH_WORK="$WORK" FERRIX_STORE_BIN="$WORK/bin/nix-store" python3 bench/add-tree.py
