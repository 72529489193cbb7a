#!/usr/bin/env python3
"""Local store operations, Ferrix against real Nix 2.8 in one run, as ratios.

Called by bench/store.sh (which builds ferrix and makes the personality links). Measures:
  add     one `nix-store --add` of N small files
  import  `nix-store --import` of an N-path export stream (a DAG, see gen-export.py)
  query   `nix-store -qR` of the N-path closure (both tools on the same Nix-made store)
  gc      `nix-store --gc` of N dead paths (a fresh store filled by Nix for each run)

Every measured run gets a fresh store directory. Runs alternate between the tools (nix first
in even rounds, ferrix first in odd ones): on some file systems the cost of creating files
depends on how many were deleted in the last minutes, so running all of one tool's runs
before the other's would favour whichever goes first.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

N = int(os.environ.get("FERRIX_BENCH_PATHS", "5000"))
RUNS = int(os.environ.get("FERRIX_BENCH_RUNS", "5"))
WORK = os.environ["FERRIX_BENCH_WORK"]
TOOLS = {"nix": os.environ["NIX_STORE_BIN"], "ferrix": os.environ["FERRIX_STORE_BIN"]}
HERE = os.path.dirname(os.path.abspath(__file__))
DEVNULL = subprocess.DEVNULL
counter = 0


def env_for(d):
    return dict(
        os.environ,
        NIX_STORE_DIR=f"{d}/store",
        NIX_STATE_DIR=f"{d}/state",
        NIX_LOG_DIR=f"{d}/log",
        NIX_CONF_DIR=f"{WORK}/etc",
        HOME=f"{d}/home",
    )


def fresh():
    global counter
    counter += 1
    d = f"{WORK}/runs/{counter}"
    os.makedirs(d)
    return d


def gen_stream(d):
    path = f"{d}/stream"
    with open(path, "wb") as out:
        subprocess.run(
            [sys.executable, f"{HERE}/gen-export.py", f"{d}/store", str(N)],
            stdout=out, stderr=DEVNULL, check=True,
        )
    return path


def run(cmd, env, stdin=None):
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as inp:
        subprocess.run(cmd, env=env, stdin=inp, stdout=DEVNULL, stderr=DEVNULL, check=True)


def timed(cmd, env, stdin=None):
    os.sync()
    t = time.perf_counter()
    run(cmd, env, stdin)
    return time.perf_counter() - t


def check_store(d, what):
    """Real Nix must find a store that Ferrix wrote complete and correct."""
    out = subprocess.run(
        [TOOLS["nix"], "--verify", "--check-contents"], env=env_for(d),
        capture_output=True, text=True,
    )
    bad = [l for l in out.stderr.splitlines() if not l.startswith(("reading", "checking"))]
    if out.returncode != 0 or bad:
        sys.exit(f"store.py: nix-store --verify finds problems after ferrix {what}: {bad}")


files = sorted(os.listdir(f"{WORK}/files"))
files = [f"{WORK}/files/{f}" for f in files]


def op_add(tool, checked):
    d = fresh()
    t = timed([TOOLS[tool], "--add", *files], env_for(d))
    if tool == "ferrix" and not checked:
        check_store(d, "--add")
    return t


def op_import(tool, checked):
    d = fresh()
    stream = gen_stream(d)
    t = timed([TOOLS[tool], "--import"], env_for(d), stream)
    if tool == "ferrix" and not checked:
        check_store(d, "--import")
    return t


QUERY = f"{WORK}/q"


def op_query(tool, _checked):
    return timed([TOOLS[tool], "-qR", TOP], env_for(QUERY))


def op_gc(tool, _checked):
    d = fresh()
    run([TOOLS["nix"], "--import"], env_for(d), gen_stream(d))
    t = timed([TOOLS[tool], "--gc"], env_for(d))
    left = subprocess.run([TOOLS["nix"], "--gc", "--print-dead"], env=env_for(d),
                          capture_output=True, text=True).stdout.split()
    if left:
        sys.exit(f"store.py: {tool} --gc left {len(left)} dead paths")
    return t


# The query store: made by Nix once, at a fixed store directory.
os.makedirs(QUERY)
stream = gen_stream(QUERY)
with open(f"{QUERY}/stream", "rb") as s:
    out = subprocess.run([TOOLS["nix"], "--import"], env=env_for(QUERY), stdin=s,
                         capture_output=True, check=True)
TOP = out.stdout.decode().split()[-1]
q = {t: subprocess.run([TOOLS[t], "-qR", TOP], env=env_for(QUERY), capture_output=True,
                       check=True).stdout for t in TOOLS}
if q["nix"] != q["ferrix"] or len(q["nix"].split()) != N:
    sys.exit("store.py: ferrix and nix disagree on -qR (or the closure has the wrong size)")

OPS = [
    ("add", f"add {N} small paths", op_add),
    ("import", f"import {N}-path stream", op_import),
    ("query", f"-qR of a {N}-path closure", op_query),
    ("gc", f"GC of {N} dead paths", op_gc),
]
results = {}
for key, label, op in OPS:
    print(f"== {label}", flush=True)
    checked = False
    for tool in TOOLS:  # warm-up, one each (also checks ferrix's store once)
        op(tool, checked)
    checked = True
    times = {t: [] for t in TOOLS}
    for i in range(RUNS):
        order = ["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]
        for tool in order:
            times[tool].append(op(tool, checked))
    results[key] = {"label": label, "times": times}

with open(f"{WORK}/store.json", "w") as f:
    json.dump(results, f, indent=1)

fs = subprocess.run(["df", "-T", WORK], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
print(f"\nLocal store benchmark: {N} paths, {RUNS} runs each, alternating; work dir {WORK} ({fs})")
print("mean (median) seconds, lower is better\n")
print(f"{'operation':30} {'nix':>15} {'ferrix':>15} {'nix/ferrix':>11}")
for key, r in results.items():
    m = {t: statistics.mean(v) for t, v in r["times"].items()}
    md = {t: statistics.median(v) for t, v in r["times"].items()}
    print(f"{r['label']:30} {m['nix']:7.3f} ({md['nix']:5.3f}) {m['ferrix']:7.3f} ({md['ferrix']:5.3f})"
          f" {m['nix'] / m['ferrix']:10.2f}x")
print("\ngoal: each >= 3x faster than Nix 2.8 (ratio nix/ferrix >= 3).")
shutil.rmtree(f"{WORK}/runs", ignore_errors=True)
