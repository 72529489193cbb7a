#!/usr/bin/env bash
# Substitution and serving, Ferrix against real Nix 2.8: a ~512 MiB closure of 100 paths
# substituted from zstd and xz caches (file:// and http://127.0.0.1) by each tool, `zstd -d`
# alone as the limit, one large path (zstd, and xz in blocks), and `ferrix serve-cache`
# throughput on 1 and 8 connections. See
# substitute.py and bench/README.md. Run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-substitute}
for t in nix nix-store python3 curl zstd xz; do
  command -v "$t" >/dev/null || { echo "substitute.sh: '$t' is missing: apt-get install -y nix-bin python3 curl zstd xz-utils" >&2; exit 1; }
done
cargo build --release -q -p ferrix-cli
if [ -e "$WORK" ]; then chmod -R u+w "$WORK"; rm -rf "$WORK"; fi
mkdir -p "$WORK/etc" "$WORK/bin"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
printf 'sandbox = false\nbuild-users-group =\nsubstituters =\nexperimental-features = nix-command\n' > "$WORK/etc/nix.conf"
target/release/ferrix install-links "$WORK/bin" >/dev/null
FERRIX_BENCH_WORK="$WORK" FERRIX_BIN="$PWD/target/release/ferrix" \
  FERRIX_STORE_BIN="$WORK/bin/nix-store" python3 bench/substitute.py
