#!/usr/bin/env bash
# Local store operations, Ferrix against real Nix 2.8 in one run, as ratios (see store.py):
#   add 5000 small paths, import a 5000-path export stream, `nix-store -qR` of a 5000-path
#   closure, GC of 5000 dead paths. Run by hand; see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-store}
N=${FERRIX_BENCH_PATHS:-5000}
for t in nix-store python3; do
  command -v "$t" >/dev/null || { echo "store.sh: '$t' is missing: apt-get install -y nix-bin python3" >&2; exit 1; }
done

cargo build --release -q -p ferrix-cli
# An old work dir is deleted only after the run: on some file systems (ext4 without a
# journal, as here) creating files is slow for minutes after thousands were deleted.
OLD=""
if [ -e "$WORK" ]; then OLD="$WORK.old-$$"; mv "$WORK" "$OLD"; fi
trap '[ -z "$OLD" ] || rm -rf "$OLD"' EXIT
mkdir -p "$WORK/files" "$WORK/bin" "$WORK/etc"
target/release/ferrix install-links "$WORK/bin" >/dev/null
printf 'sandbox = false\nbuild-users-group =\nsubstituters =\n' > "$WORK/etc/nix.conf"
for i in $(seq 1 "$N"); do printf 'file %d\n' "$i" > "$WORK/files/f$i"; done

FERRIX_BENCH_WORK="$WORK" FERRIX_BENCH_PATHS="$N" \
  NIX_STORE_BIN="$(command -v nix-store)" FERRIX_STORE_BIN="$WORK/bin/nix-store" \
  python3 bench/store.py
