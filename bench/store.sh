#!/usr/bin/env bash
# Local store operations, Ferrix against real Nix 2.8 in one run, as ratios:
#   add 5000 small paths (one `nix-store --add` of 5000 files), import a 5000-path export
#   stream, `nix-store -qR` of a 5000-path closure, and GC of 5000 dead paths.
# Each tool gets its own store under the work dir, with the same layout. Run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${FERRIX_BENCH_PATHS:-5000}
RUNS=${FERRIX_BENCH_RUNS:-5}
WORK=${FERRIX_BENCH_DIR:-/var/tmp/ferrix-bench-store}
for t in nix-store hyperfine python3; do
  command -v "$t" >/dev/null || { echo "store.sh: '$t' is missing: apt-get install -y nix-bin hyperfine python3" >&2; exit 1; }
done
NIX_STORE_BIN=$(command -v nix-store)

cargo build --release -q -p ferrix-cli
rm -rf "$WORK"; mkdir -p "$WORK/files" "$WORK/bin"
target/release/ferrix install-links "$WORK/bin" >/dev/null
FERRIX_STORE_BIN="$WORK/bin/nix-store"

SD="$WORK/store"
for i in $(seq 1 "$N"); do printf 'file %d\n' "$i" > "$WORK/files/f$i"; done
python3 bench/gen-export.py "$SD" "$N" > "$WORK/stream" 2> "$WORK/top"
TOP=$(cat "$WORK/top")

mkdir -p "$WORK/etc" "$WORK/runs"
printf 'sandbox = false\nbuild-users-group =\nsubstituters =\n' > "$WORK/etc/nix.conf"
# Every measured run gets a fresh store directory (never one just emptied: deleting thousands
# of files leaves the file system busy for a while, which would slow whichever run follows).
echo 0 > "$WORK/counter"
FRESH="sync; n=\$((\$(cat $WORK/counter) + 1)); echo \$n > $WORK/counter; mkdir -p $WORK/runs/\$n"
ENVRUN="d=$WORK/runs/\$(cat $WORK/counter); env NIX_STORE_DIR=\$d/store NIX_STATE_DIR=\$d/state NIX_LOG_DIR=\$d/log NIX_CONF_DIR=$WORK/etc HOME=\$d/home"
# The file list is read by the shell at run time: 5000 paths are too long for one argument.
(cd "$WORK/files" && ls | sed "s|^|$WORK/files/|") > "$WORK/filelist"
files="\$(cat $WORK/filelist)"

hf() { hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/$1.json" "${@:2}" >/dev/null; }

echo "== add $N small paths"
hf add --prepare "$FRESH" \
  -n nix "$ENVRUN $NIX_STORE_BIN --add $files" \
  -n ferrix "$ENVRUN $FERRIX_STORE_BIN --add $files"
echo "== import a $N-path export stream"
# Each run's stream names paths in that run's own store directory.
IMPORTPREP="$FRESH; d=$WORK/runs/\$(cat $WORK/counter); python3 bench/gen-export.py \$d/store $N > \$d/stream 2>/dev/null"
hf import --prepare "$IMPORTPREP" \
  -n nix "$ENVRUN $NIX_STORE_BIN --import < \$d/stream" \
  -n ferrix "$ENVRUN $FERRIX_STORE_BIN --import < \$d/stream"
echo "== nix-store -qR of a $N-path closure (a store made by Nix, queried by each)"
# The export stream names paths in $SD: query a store at exactly that directory.
QENV="env NIX_STORE_DIR=$SD NIX_STATE_DIR=$WORK/q/state NIX_LOG_DIR=$WORK/q/log NIX_CONF_DIR=$WORK/etc HOME=$WORK/q/home"
$QENV $NIX_STORE_BIN --import < "$WORK/stream" > /dev/null
hf query \
  -n nix "$QENV $NIX_STORE_BIN -qR $TOP" \
  -n ferrix "$QENV $FERRIX_STORE_BIN -qR $TOP"
[ "$($QENV $NIX_STORE_BIN -qR "$TOP" | wc -l)" = "$N" ] || { echo "closure size is wrong" >&2; exit 1; }
cmp <($QENV $NIX_STORE_BIN -qR "$TOP") <($QENV $FERRIX_STORE_BIN -qR "$TOP") || { echo "ferrix and nix disagree on -qR" >&2; exit 1; }
echo "== GC of $N dead paths (each run on a fresh store filled by Nix)"
# A second stream in each run's own store directory.
GCPREP="$FRESH; d=$WORK/runs/\$(cat $WORK/counter); python3 bench/gen-export.py \$d/store $N 2>/dev/null | env NIX_STORE_DIR=\$d/store NIX_STATE_DIR=\$d/state NIX_LOG_DIR=\$d/log NIX_CONF_DIR=$WORK/etc HOME=\$d/home $NIX_STORE_BIN --import > /dev/null; sync"
hf gc --prepare "$GCPREP" \
  -n nix "$ENVRUN $NIX_STORE_BIN --gc" \
  -n ferrix "$ENVRUN $FERRIX_STORE_BIN --gc"
rm -rf "$WORK/runs" "$WORK/q"

python3 - "$WORK" "$N" <<'PY'
import json, sys
work, n = sys.argv[1], sys.argv[2]
print(f"\nLocal store benchmark, {n} paths, hyperfine means (lower is better)\n")
print(f"{'operation':34} {'nix s':>9} {'ferrix s':>9} {'nix/ferrix':>11}")
for key, label in [("add", f"add {n} small paths"), ("import", f"import {n}-path stream"),
                   ("query", f"-qR of a {n}-path closure"), ("gc", f"GC of {n} dead paths")]:
    r = {x["command"]: x["mean"] for x in json.load(open(f"{work}/{key}.json"))["results"]}
    print(f"{label:34} {r['nix']:9.3f} {r['ferrix']:9.3f} {r['nix'] / r['ferrix']:10.2f}x")
print("\ngoal: each >= 3x faster than Nix 2.8 (ratio nix/ferrix >= 3).")
PY
