#!/usr/bin/env bash
# Whole-command benchmark: NAR hashing and NAR dumping of a ~1 GiB tree,
# Ferrix vs real Nix (2.8) vs the single-core SHA-256 limit (openssl), in one run.
#
# Run by hand; it prints a table and ratios and is not a CI pass/fail gate.
# It exits non-zero only on setup errors or if Ferrix and Nix disagree on the hash.
#
# Environment knobs:
#   FERRIX_BENCH_DIR    work dir (tree, big file, links, JSON)  [/tmp/ferrix-bench]
#   FERRIX_BENCH_RUNS   hyperfine --runs                       [5]
#   FERRIX_BENCH_MIB    total data size in MiB                 [1024]
#   FERRIX_BENCH_FILES  number of regular files in the tree    [4000]
#   FERRIX_BENCH_DIRS   number of directories in the tree      [40]
#   FERRIX_BIN          use this ferrix binary, skip cargo build
#   NIX_HASH, NIX_STORE real Nix binaries  [/usr/bin/nix-hash, /usr/bin/nix-store]
set -euo pipefail

die() { echo "nar-hash.sh: error: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${FERRIX_BENCH_DIR:-/tmp/ferrix-bench}
RUNS=${FERRIX_BENCH_RUNS:-5}
MIB=${FERRIX_BENCH_MIB:-1024}
NFILES=${FERRIX_BENCH_FILES:-4000}
NDIRS=${FERRIX_BENCH_DIRS:-40}
NIX_HASH=${NIX_HASH:-/usr/bin/nix-hash}
NIX_STORE=${NIX_STORE:-/usr/bin/nix-store}

for v in RUNS MIB NFILES NDIRS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done

# ---------------------------------------------------------------- prerequisites
missing=()
[[ -x $NIX_HASH ]] || missing+=("nix-hash ($NIX_HASH)")
[[ -x $NIX_STORE ]] || missing+=("nix-store ($NIX_STORE)")
command -v openssl >/dev/null || missing+=(openssl)
command -v hyperfine >/dev/null || missing+=(hyperfine)
if ((${#missing[@]})); then
    die "missing: ${missing[*]}
    install them with:  apt-get install -y nix-bin hyperfine openssl"
fi
command -v python3 >/dev/null || die "python3 is needed to build the tree and read hyperfine's JSON"
[[ -n ${FERRIX_BIN:-} ]] || command -v cargo >/dev/null || die "cargo not found (or set FERRIX_BIN)"

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
TREE=$WORK/tree
BIG=$WORK/big.bin
STAMP=$WORK/data.stamp
BYTES=$((MIB * 1024 * 1024))
CONFIG="v1 bytes=$BYTES files=$NFILES dirs=$NDIRS"

# ---------------------------------------------------------------- data (cached)
if [[ -f $STAMP && $(cat "$STAMP") == "$CONFIG" && -d $TREE && -f $BIG ]]; then
    say "reusing data in $WORK ($CONFIG)"
else
    say "generating data in $WORK ($CONFIG)"
    start=$SECONDS
    rm -rf "$STAMP" "$TREE" "$TREE.tmp" "$BIG" "$BIG.tmp" "$WORK/nar-size"
    # Deterministic pseudo-random bytes: AES-128-CTR keystream with a fixed key.
    head -c "$BYTES" /dev/zero |
        openssl enc -aes-128-ctr -nosalt \
            -K 000102030405060708090a0b0c0d0e0f -iv 00000000000000000000000000000000 \
            >"$BIG.tmp"
    [[ $(stat -c %s "$BIG.tmp") == "$BYTES" ]] || die "openssl produced the wrong size"
    # Cut the same bytes into a nested tree: log-uniform file sizes (1 B .. 8 MiB,
    # some empty, scaled so the contents total exactly $BYTES), some executables,
    # a few symlinks. A fixed-seed splitmix64 keeps it identical across machines.
    python3 - "$BIG.tmp" "$TREE.tmp" "$NFILES" "$NDIRS" "$BYTES" <<'PY'
import os, sys
blob, root, nfiles, ndirs, total = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
state = 0x5EED_F3_2217
def rnd():
    global state
    state = (state + 0x9E3779B97F4A7C15) & (2**64 - 1)
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return z ^ (z >> 31)
def uniform():
    return rnd() / 2**64

# Directories: dir 0 is the root; dir i hangs under dir (i-1)//3 (depth ~4).
dirs = [root]
os.makedirs(root)
for i in range(1, ndirs):
    d = os.path.join(dirs[(i - 1) // 3], "d%02d%s" % (i, ["", ".dir", "_Lib", "-x"][rnd() % 4]))
    os.mkdir(d)
    dirs.append(d)

weights = [0.0 if rnd() % 50 == 0 else 2.0 ** (uniform() * 23) for _ in range(nfiles)]
scale = total / sum(weights)
sizes = [int(w * scale) for w in weights]
sizes[max(range(nfiles), key=lambda i: sizes[i])] += total - sum(sizes)

suffixes = ["", ".c", ".h", ".o", ".so.1", ".tar", "-Data", ".TXT"]
with open(blob, "rb") as src:
    for i, size in enumerate(sizes):
        d = dirs[rnd() % ndirs]
        path = os.path.join(d, "f%04d%s" % (i, suffixes[rnd() % len(suffixes)]))
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = src.read(min(left, 1 << 22))
                f.write(chunk)
                left -= len(chunk)
        os.chmod(path, 0o755 if rnd() % 16 == 0 else 0o644)
        if i % 200 == 0:  # a few symlinks, relative and dangling
            os.symlink(os.path.basename(path), os.path.join(d, "link%04d" % i))
            os.symlink("../nowhere/%d" % i, os.path.join(d, "dangling%04d" % i))
    assert src.tell() == total, (src.tell(), total)
PY
    mv "$TREE.tmp" "$TREE"
    mv "$BIG.tmp" "$BIG"
    echo "$CONFIG" >"$STAMP"
    say "generated in $((SECONDS - start)) s"
fi

# ---------------------------------------------------------------- ferrix build
if [[ -n ${FERRIX_BIN:-} ]]; then
    FERRIX=$(realpath "$FERRIX_BIN")
    [[ -x $FERRIX ]] || die "FERRIX_BIN=$FERRIX_BIN is not executable"
    say "using FERRIX_BIN=$FERRIX"
else
    say "cargo build --release -p ferrix-cli (may wait for another cargo's lock)"
    FERRIX=$(cd "$ROOT" && cargo build --release -p ferrix-cli --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ferrix" and m.get("executable"):
        exe = m["executable"]
print(exe or "")') || die "cargo build --release -p ferrix-cli failed"
    [[ -n $FERRIX && -x $FERRIX ]] || die "cargo build did not produce the ferrix binary"
fi
LINKS=$WORK/bin
"$FERRIX" install-links "$LINKS" >/dev/null
F_NIX_HASH=$LINKS/nix-hash
F_NIX_STORE=$LINKS/nix-store
[[ -x $F_NIX_HASH && -x $F_NIX_STORE ]] || die "ferrix install-links did not create nix-hash/nix-store in $LINKS"

# ---------------------------------------------------------------- warm cache
say "warming the page cache"
find "$TREE" -type f -exec cat {} + >/dev/null
cat "$BIG" >/dev/null

# ---------------------------------------------------------------- correctness
say "checking ferrix against nix"
expect=$("$NIX_HASH" --type sha256 "$TREE")
check() { # name, actual
    if [[ $2 != "$expect" ]]; then
        echo "nar-hash.sh: MISMATCH: $1 gave '$2', nix-hash gave '$expect'" >&2
        exit 1
    fi
}
check "ferrix hash path --base16" "$("$FERRIX" hash path --base16 "$TREE")"
check "ferrix nix-hash --type sha256" "$("$F_NIX_HASH" --type sha256 "$TREE")"
check "ferrix nix-store --dump | sha256" "$("$F_NIX_STORE" --dump "$TREE" | openssl dgst -sha256 -r | cut -d' ' -f1)"
check "ferrix nar dump-path | sha256" "$("$FERRIX" nar dump-path "$TREE" | openssl dgst -sha256 -r | cut -d' ' -f1)"
if [[ ! -s $WORK/nar-size ]]; then
    "$NIX_STORE" --dump "$TREE" | wc -c >"$WORK/nar-size"
fi
NAR_BYTES=$(tr -d ' \n' <"$WORK/nar-size")
say "ok: all four ferrix paths give $expect (NAR is $NAR_BYTES bytes)"

# ---------------------------------------------------------------- timing
JSON=$WORK/nar-hash.json
q() { printf '%q' "$1"; }
say "hyperfine --warmup 1 --runs $RUNS (7 commands)"
hyperfine --shell=bash --warmup 1 --runs "$RUNS" --export-json "$JSON" \
    -n openssl-sha256 "openssl dgst -sha256 $(q "$BIG")" \
    -n nix-hash "$(q "$NIX_HASH") --type sha256 $(q "$TREE")" \
    -n ferrix-hash-path "$(q "$FERRIX") hash path --base16 $(q "$TREE")" \
    -n ferrix-nix-hash "$(q "$F_NIX_HASH") --type sha256 $(q "$TREE")" \
    -n nix-store-dump "$(q "$NIX_STORE") --dump $(q "$TREE") > /dev/null" \
    -n ferrix-nix-store-dump "$(q "$F_NIX_STORE") --dump $(q "$TREE") > /dev/null" \
    -n ferrix-nar-dump-path "$(q "$FERRIX") nar dump-path $(q "$TREE") > /dev/null" \
    >&2

# Raw SHA-256 compute speed without any I/O (bytes/s), for reference only.
say "openssl speed -evp sha256 (raw compute, no I/O)"
SPEED=$(openssl speed -evp sha256 -bytes 1048576 -seconds 2 2>/dev/null |
    awk '$1 == "sha256" { v = $2; sub(/k$/, "", v); printf "%.0f", v * 1000 }' || true)

# ---------------------------------------------------------------- report
python3 - "$JSON" "$BYTES" "$NAR_BYTES" "$RUNS" "$NFILES" "$NDIRS" "${SPEED:-0}" <<'PY'
import json, sys
path, big, nar, runs, nfiles, ndirs, raw = sys.argv[1], *map(int, sys.argv[2:])
res = {r["command"]: r for r in json.load(open(path))["results"]}
GiB = 1024 ** 3
rows = [
    ("openssl-sha256", "openssl dgst -sha256 BIGFILE", big),
    ("nix-hash", "nix-hash --type sha256 TREE  (Nix)", nar),
    ("ferrix-hash-path", "ferrix hash path --base16 TREE", nar),
    ("ferrix-nix-hash", "nix-hash --type sha256 TREE  (ferrix)", nar),
    ("nix-store-dump", "nix-store --dump TREE  (Nix)", nar),
    ("ferrix-nix-store-dump", "nix-store --dump TREE  (ferrix)", nar),
    ("ferrix-nar-dump-path", "ferrix nar dump-path TREE", nar),
]
t = {k: res[k]["mean"] for k, _, _ in rows}
print()
print("NAR hash/dump benchmark: %.2f GiB in %d files / %d dirs (NAR %.3f GiB), "
      "hyperfine --warmup 1 --runs %d, warm page cache"
      % (big / GiB, nfiles, ndirs, nar / GiB, runs))
print()
print("%-40s %9s %8s %8s" % ("command", "mean s", "± s", "GiB/s"))
print("-" * 68)
for k, label, n in rows:
    r = res[k]
    print("%-40s %9.3f %8.3f %8.2f" % (label, r["mean"], r["stddev"] or 0.0, n / GiB / r["mean"]))
print()

def speed(a, b):  # speed of a relative to b = time b / time a
    return t[b] / t[a]
def goal(x):
    return "met" if x >= 1.0 else "NOT met"
h1, h2 = speed("ferrix-hash-path", "nix-hash"), speed("ferrix-nix-hash", "nix-hash")
d1, d2 = speed("ferrix-nix-store-dump", "nix-store-dump"), speed("ferrix-nar-dump-path", "nix-store-dump")
print("ratios (speed = inverse mean time; > 1.00 means ferrix is faster)")
for label, x in [("hash: ferrix hash path / nix-hash", h1),
                 ("hash: ferrix nix-hash / nix-hash", h2),
                 ("dump: ferrix nix-store --dump / nix-store --dump", d1),
                 ("dump: ferrix nar dump-path / nix-store --dump", d2)]:
    print("  %-50s %5.2fx   [goal >= 1.00: %s]" % (label, x, goal(x)))
o = t["ferrix-hash-path"] / t["openssl-sha256"]
ob = (nar / t["ferrix-hash-path"]) / (big / t["openssl-sha256"])
print("  %-50s %5.2fx   (ferrix throughput = %.0f%% of openssl's)"
      % ("sha256 limit: ferrix hash path time / openssl time", o, 100 * ob))
if raw:
    print("  %-50s %5.0f%%   (openssl speed -evp sha256: %.2f GiB/s, no I/O)"
          % ("ferrix hash path vs raw SHA-256 compute", 100 * nar / t["ferrix-hash-path"] / raw, raw / GiB))
print()
print("goal: ferrix/nix-hash >= 1.0 and ferrix dump >= nix-store --dump;"
      " openssl is the single-core SHA-256 ceiling.")
print("(informational only, not a CI gate; raw data: %s)" % path)
PY
