#!/usr/bin/env bash
# The daemon: Ferrix's nix-daemon against real Nix 2.8's on stores of their own (see
# daemon.py): query round trip and throughput, and 200 trivial builds through each. Run by
# hand; see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-daemon}
for t in nix-daemon nix-store nix-instantiate python3; do
  command -v "$t" >/dev/null || { echo "daemon.sh: '$t' is missing: apt-get install -y nix-bin python3" >&2; exit 1; }
done
cargo build --release -q -p ferrix-cli
# The load client and the do-nothing daemon that gives the floor (see daemon.py).
cargo build --release -q -p ferrix-daemon --example query-load --example null-daemon
rm -rf "$WORK"
mkdir -p "$WORK/bin"
target/release/ferrix install-links "$WORK/bin" >/dev/null
FERRIX_BENCH_WORK="$WORK" NIX_DAEMON_BIN="$(command -v nix-daemon)" FERRIX_DAEMON_BIN="$WORK/bin/nix-daemon" \
  NIX_STORE_BIN="$(command -v nix-store)" NIX_INSTANTIATE_BIN="$(command -v nix-instantiate)" \
  QUERY_LOAD_BIN="$PWD/target/release/examples/query-load" NULL_DAEMON_BIN="$PWD/target/release/examples/null-daemon" \
  python3 bench/daemon.py
