#!/usr/bin/env bash
# Remote builds, Ferrix against real Nix 2.8 as the master, both sending work to the same
# kind of machine: real Nix 2.8 behind `ssh://localhost` (run here without ssh, with a
# store of its own under the work dir, so every input and output really travels over the
# serve protocol). See remote.py. Run by hand; see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-remote}
for t in nix-store nix-instantiate python3; do
  command -v "$t" >/dev/null || { echo "remote.sh: '$t' is missing: apt-get install -y nix-bin python3" >&2; exit 1; }
done
cargo build --release -q -p ferrix-cli
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$WORK/etc"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
target/release/ferrix install-links "$WORK/bin" >/dev/null
# The master builds nothing itself (-j0). The machines' stores are kept elsewhere than
# their paths say, so they build in their sandbox (Nix's rule), which must show /bin/sh.
printf 'sandbox = false\nsandbox-paths = /bin /usr /lib /lib64\nbuild-users-group =\nsubstituters =\n' > "$WORK/etc/nix.conf"

FERRIX_BENCH_WORK="$WORK" NIX_STORE_BIN="$(command -v nix-store)" \
  NIX_INSTANTIATE_BIN="$(command -v nix-instantiate)" FERRIX_STORE_BIN="$WORK/bin/nix-store" \
  python3 bench/remote.py
