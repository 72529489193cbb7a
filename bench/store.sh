#!/usr/bin/env bash
# Local store operations, Ferrix against real Nix 2.8 in one run, as ratios:
#   add 5000 small paths (one `nix-store --add` of 5000 files), import a 5000-path export
#   stream, `nix-store -qR` of a 5000-path closure, and GC of 5000 dead paths.
# Each tool gets its own store under the work dir, with the same layout. Run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${FERRIX_BENCH_PATHS:-5000}
RUNS=${FERRIX_BENCH_RUNS:-5}
WORK=${FERRIX_BENCH_DIR:-/tmp/ferrix-bench-store}
for t in nix-store hyperfine python3; do
  command -v "$t" >/dev/null || { echo "store.sh: '$t' is missing: apt-get install -y nix-bin hyperfine python3" >&2; exit 1; }
done
NIX_STORE_BIN=$(command -v nix-store)

cargo build --release -q -p ferrix-cli
rm -rf "$WORK"; mkdir -p "$WORK/files" "$WORK/bin"
target/release/ferrix install-links "$WORK/bin" >/dev/null
FERRIX_STORE_BIN="$WORK/bin/nix-store"

# Both stores use the logical store dir $WORK/store; each tool has its own root.
SD="$WORK/store"
for i in $(seq 1 "$N"); do printf 'file %d\n' "$i" > "$WORK/files/f$i"; done
python3 bench/gen-export.py "$SD" "$N" > "$WORK/stream" 2> "$WORK/top"
TOP=$(cat "$WORK/top")

envfor() { # the environment that points a tool at its own store
  local r="$WORK/$1"
  echo "env NIX_STORE_DIR=$SD NIX_STATE_DIR=$r/state NIX_LOG_DIR=$r/log NIX_CONF_DIR=$WORK/etc HOME=$r/home"
}
mkdir -p "$WORK/etc"
printf 'sandbox = false\nbuild-users-group =\nsubstituters =\n' > "$WORK/etc/nix.conf"
# The store directory itself is shared by name, so each measurement starts from a clean one.
reset() { echo "rm -rf $SD $WORK/nix $WORK/ferrix"; }
NIXE=$(envfor nix); FXE=$(envfor ferrix)
# The file list is read by the shell at run time: 5000 paths are too long for one argument.
(cd "$WORK/files" && ls | sed "s|^|$WORK/files/|") > "$WORK/filelist"
files="\$(cat $WORK/filelist)"

hf() { hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/$1.json" "${@:2}" >/dev/null; }

echo "== add $N small paths"
hf add --prepare "$(reset)" \
  -n nix "$NIXE $NIX_STORE_BIN --add $files" \
  -n ferrix "$FXE $FERRIX_STORE_BIN --add $files"
echo "== import a $N-path export stream"
hf import --prepare "$(reset)" \
  -n nix "$NIXE $NIX_STORE_BIN --import < $WORK/stream" \
  -n ferrix "$FXE $FERRIX_STORE_BIN --import < $WORK/stream"
echo "== nix-store -qR of a $N-path closure"
# One store made by each tool, queried by each tool.
bash -c "$(reset); $NIXE $NIX_STORE_BIN --import < $WORK/stream > /dev/null"
hf query \
  -n nix "$NIXE $NIX_STORE_BIN -qR $TOP" \
  -n ferrix "$NIXE $FERRIX_STORE_BIN -qR $TOP"
[ "$($NIXE $NIX_STORE_BIN -qR "$TOP" | wc -l)" = "$N" ] || { echo "closure size is wrong" >&2; exit 1; }
cmp <($NIXE $NIX_STORE_BIN -qR "$TOP") <($NIXE $FERRIX_STORE_BIN -qR "$TOP") || { echo "ferrix and nix disagree on -qR" >&2; exit 1; }
echo "== GC of $N dead paths"
hf gc \
  --prepare "$(reset); $NIXE $NIX_STORE_BIN --import < $WORK/stream > /dev/null" \
  -n nix "$NIXE $NIX_STORE_BIN --gc" \
  -n ferrix "$NIXE $FERRIX_STORE_BIN --gc"

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
