#!/usr/bin/env bash
# Evaluation, Ferrix against real Nix 2.8 on the same expressions (see eval.py): seconds and
# peak memory of `nix-instantiate --eval --strict`, as ratios. Run by hand; see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-eval}
for t in nix-instantiate python3; do
  command -v "$t" >/dev/null || { echo "eval.sh: '$t' is missing: apt-get install -y nix-bin python3" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "eval.sh: /usr/bin/time is missing: apt-get install -y time" >&2; exit 1; }
cargo build --release -q -p ferrix-cli
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$WORK/etc" "$WORK/home"
trap 'rm -rf "$WORK"' EXIT
target/release/ferrix install-links "$WORK/bin" >/dev/null
printf 'sandbox = false\nbuild-users-group =\nsubstituters =\n' > "$WORK/etc/nix.conf"
FERRIX_BENCH_WORK="$WORK" NIX_INSTANTIATE_BIN="$(command -v nix-instantiate)" \
  FERRIX_INSTANTIATE_BIN="$WORK/bin/nix-instantiate" python3 bench/eval.py
