#!/usr/bin/env bash
# Binary caches, Ferrix against real Nix 2.8 on the same store: writing a closure to a
# file:// cache (none, zstd, xz) and reading it back into the store. See cache.py and
# bench/README.md. Run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-cache}
for t in nix nix-store python3; do
  command -v "$t" >/dev/null || { echo "cache.sh: '$t' is missing: apt-get install -y nix-bin python3" >&2; exit 1; }
done
cargo build --release -q -p ferrix-cli
if [ -e "$WORK" ]; then chmod -R u+w "$WORK"; rm -rf "$WORK"; fi
mkdir -p "$WORK/etc"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
printf 'sandbox = false\nbuild-users-group =\nsubstituters =\nexperimental-features = nix-command\n' > "$WORK/etc/nix.conf"
FERRIX_BENCH_WORK="$WORK" FERRIX_BIN="$PWD/target/release/ferrix" python3 bench/cache.py
