#!/usr/bin/env bash
# Local builds, Ferrix against real Nix 2.8 on the same .drv files (see build.py): 300
# independent derivations, a 150-deep chain, 10 layers x 30 fully connected, 8 sleepers with
# -j8 and a random DAG of sleepers against its lower bound. Run by hand; see bench/README.md.
# FERRIX_BENCH_SANDBOX=1 runs the same with the sandbox on.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-build}
for t in nix-store nix-instantiate python3; do
  command -v "$t" >/dev/null || { echo "build.sh: '$t' is missing: apt-get install -y nix-bin python3" >&2; exit 1; }
done
cargo build --release -q -p ferrix-cli
OLD=""
if [ -e "$WORK" ]; then OLD="$WORK.old-$$"; mv "$WORK" "$OLD"; fi
trap '[ -z "$OLD" ] || { chmod -R u+w "$OLD"; rm -rf "$OLD"; }' EXIT
mkdir -p "$WORK/bin" "$WORK/etc"
target/release/ferrix install-links "$WORK/bin" >/dev/null
# FERRIX_BENCH_SANDBOX=1: both tools build in their sandboxes, which must show Debian's
# /bin/sh and its libraries.
if [ "${FERRIX_BENCH_SANDBOX:-0}" = 1 ]; then
  printf 'sandbox = true\nsandbox-fallback = false\nsandbox-paths = /bin /usr /lib /lib64\nbuild-users-group =\nsubstituters =\n' > "$WORK/etc/nix.conf"
else
  printf 'sandbox = false\nbuild-users-group =\nsubstituters =\n' > "$WORK/etc/nix.conf"
fi

FERRIX_BENCH_WORK="$WORK" NIX_STORE_BIN="$(command -v nix-store)" \
  NIX_INSTANTIATE_BIN="$(command -v nix-instantiate)" FERRIX_STORE_BIN="$WORK/bin/nix-store" \
  python3 bench/build.py
