#!/usr/bin/env python3
"""Local builds, Ferrix against real Nix 2.8 on the same derivations, as ratios.

Called by bench/build.sh. Each graph is written as a Nix expression and instantiated with
real `nix-instantiate`; then each tool realises the same `.drv` files with `nix-store -r` on a
fresh store at the same place (the store is wiped and the graph instantiated again before
every run; only the realisation is timed; old stores are deleted after all runs). Runs
alternate between the tools.

Graphs (builders are /bin/sh; FERRIX_BENCH_SANDBOX=1 turns both tools' sandboxes on):
  wide     N independent trivial derivations
  chain    a chain of M trivial derivations
  layers   L layers of W, each node depending on every node of the layer before
  sleep8   8 builders that sleep 1 s, with -j8
  random   a random DAG of sleep-bound builders of uneven durations, with -j8: makespan
           against the lower bound max(critical path, total work / 8)

FERRIX_BENCH_SET=disk120 runs only the local-overhead case of the distributed-builds issue:
120 independent trivial derivations with -j2, the previous run's store deleted (not moved
aside) and a `sync` before each timed run, as the issue measures it.

Ferrix's remembered build times (state/ferrix/build-times.sqlite) are kept across the wipes,
so from the warm-up run on it schedules with known durations.
"""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

WORK = os.environ["FERRIX_BENCH_WORK"]
RUNS = int(os.environ.get("FERRIX_BENCH_RUNS", "3"))
JOBS = os.environ.get("FERRIX_BENCH_JOBS", "2")
SANDBOX = os.environ.get("FERRIX_BENCH_SANDBOX", "0") == "1"
SET = os.environ.get("FERRIX_BENCH_SET", "all")
# disk120: the previous store is deleted before each run, not moved aside.
DELETE = SET == "disk120"
TOOLS = {"nix": os.environ["NIX_STORE_BIN"], "ferrix": os.environ["FERRIX_STORE_BIN"]}
INSTANTIATE = os.environ["NIX_INSTANTIATE_BIN"]
STORE = f"{WORK}/s"
ENV = dict(
    os.environ,
    NIX_STORE_DIR=f"{STORE}/store",
    NIX_STATE_DIR=f"{STORE}/state",
    NIX_LOG_DIR=f"{STORE}/log",
    NIX_CONF_DIR=f"{WORK}/etc",
    HOME=f"{STORE}/home",
)
ENV.pop("NIX_PATH", None)
ENV.pop("NIX_REMOTE", None)

PRELUDE = """
let mk = name: script: deps: derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" script ]; deps = deps;
}; in
"""


def wide(n):
    return PRELUDE + "[ " + " ".join(f'(mk "w{i}" "echo {i} > $out" [])' for i in range(n)) + " ]"


def chain(m):
    body = 'let c0 = mk "c0" "echo 0 > $out" [];\n'
    for i in range(1, m):
        body += f'  c{i} = mk "c{i}" "echo $deps > $out" [ c{i - 1} ];\n'
    return PRELUDE + body + f"in c{m - 1}"


def layers(l, w):
    body = "let\n"
    for k in range(l):
        for j in range(w):
            deps = " ".join(f"l{k - 1}_{x}" for x in range(w)) if k else ""
            body += f'  l{k}_{j} = mk "l{k}-{j}" "echo $deps > $out" [ {deps} ];\n'
    return PRELUDE + body + "in [ " + " ".join(f"l{l - 1}_{j}" for j in range(w)) + " ]"


def sleepers(durations, deps):
    """durations[i] seconds for node i, deps[i] the nodes it waits for."""
    body = "let\n"
    for i, d in enumerate(durations):
        ds = " ".join(f"n{x}" for x in deps[i])
        body += f'  n{i} = mk "n{i}" "/bin/sleep {d}; echo $deps > $out" [ {ds} ];\n'
    return PRELUDE + body + "in [ " + " ".join(f"n{i}" for i in range(len(durations))) + " ]"


TIMES = f"{STORE}/state/ferrix/build-times.sqlite"


TRASH = f"{WORK}/trash"


def empty_trash():
    if os.path.exists(TRASH):
        subprocess.run(["chmod", "-R", "u+w", TRASH], check=True)
        shutil.rmtree(TRASH)


def wipe():
    # Ferrix's remembered build times survive the wipe, as they would in a store that has
    # built these derivations before (Nix keeps nothing of the kind).
    times = open(TIMES, "rb").read() if os.path.exists(TIMES) else None
    if os.path.exists(STORE) and DELETE:
        subprocess.run(["chmod", "-R", "u+w", STORE], check=True)
        shutil.rmtree(STORE)
    elif os.path.exists(STORE):
        # The last run's store is moved aside and deleted after all runs. On ext4 without a
        # journal, inodes freed in the last 60 s (300 s while their table block is dirty)
        # are skipped one by one when a file is created: deleting thousands of them here
        # would slow every file the next run creates, whichever tool runs it.
        os.makedirs(TRASH, exist_ok=True)
        os.rename(STORE, f"{TRASH}/{len(os.listdir(TRASH))}")
    os.makedirs(f"{STORE}/home")
    if times is not None:
        os.makedirs(os.path.dirname(TIMES))
        with open(TIMES, "wb") as f:
            f.write(times)


def instantiate(expr):
    path = f"{WORK}/graph.nix"
    with open(path, "w") as f:
        f.write(expr)
    out = subprocess.run([INSTANTIATE, path], env=ENV, capture_output=True, text=True, check=True)
    return out.stdout.split()


def realise(tool, drvs, jobs):
    wipe()
    drvs = instantiate(CURRENT)
    os.sync()
    t = time.perf_counter()
    subprocess.run([TOOLS[tool], "-r", "-j", str(jobs), *drvs], env=ENV,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def measure(label, expr, count, jobs):
    global CURRENT
    CURRENT = expr
    print(f"== {label}", flush=True)
    realise("nix", None, jobs)  # warm-up
    realise("ferrix", None, jobs)
    times = {t: [] for t in TOOLS}
    for i in range(RUNS):
        for tool in (["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]):
            times[tool].append(realise(tool, None, jobs))
    return {"label": label, "count": count, "jobs": jobs, "times": times}


def baseline(levels, jobs):
    """The builders alone: `levels` lists, in dependency order, how many trivial builders
    each level runs; a level's builders run `jobs` at a time, as a build tool at best would.
    What a tool needs beyond this is its per-derivation overhead."""
    from concurrent.futures import ThreadPoolExecutor
    out = f"{WORK}/baseline"
    os.makedirs(out, exist_ok=True)
    env = {"deps": "x"}
    def one(i):
        subprocess.run(["/bin/sh", "-c", f"echo $deps > {out}/{i}"], env=env, check=True)
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        with ThreadPoolExecutor(int(jobs)) as pool:
            for n in levels:
                list(pool.map(one, range(n)))
        times.append(time.perf_counter() - t)
    return statistics.mean(times)


CURRENT = ""
empty_trash()  # left by an interrupted run
results = []
if SET == "disk120":
    results.append(measure("120 independent, store deleted", wide(120), 120, 2))
    results[-1]["baseline"] = baseline([120], 2)
    for t, v in results[-1]["times"].items():
        print(f"{t}: " + " ".join(f"{x:.3f}" for x in v))
    m = {t: statistics.mean(v) for t, v in results[-1]["times"].items()}
    print(f"120 trivial, -j2, store deleted + sync: nix {m['nix']:.3f} s, ferrix {m['ferrix']:.3f} s, "
          f"ferrix/nix {m['ferrix'] / m['nix']:.3f} (goal <= 0.2); builders alone "
          f"{results[-1]['baseline']:.3f} s")
    sys.exit(0)
results.append(measure("300 independent derivations", wide(300), 300, JOBS))
results[-1]["baseline"] = baseline([300], JOBS)
results.append(measure("a chain of 150", chain(150), 150, JOBS))
results[-1]["baseline"] = baseline([1] * 150, JOBS)
results.append(measure("10 layers x 30, fully connected", layers(10, 30), 300, JOBS))
results[-1]["baseline"] = baseline([30] * 10, JOBS)
results.append(measure("8 builders sleeping 1 s, -j8", sleepers([1] * 8, [[]] * 8), 8, 8))

# A random DAG of 80 sleep-bound nodes with uneven durations.
rng = random.Random(42)
n = 80
durations = [round(rng.choice([0.1, 0.2, 0.3, 0.5, 0.8, 1.2]), 1) for _ in range(n)]
deps = [sorted(rng.sample(range(i), min(i, rng.randint(0, 3)))) if i else [] for i in range(n)]
finish = []
for i in range(n):
    finish.append(durations[i] + max((finish[d] for d in deps[i]), default=0))
lower = max(max(finish), sum(durations) / 8)
results.append(measure(f"random DAG of {n} sleepers, -j8", sleepers(durations, deps), n, 8))
results[-1]["lower_bound"] = lower
empty_trash()

with open(f"{WORK}/build.json", "w") as f:
    json.dump(results, f, indent=1)

print(f"\nLocal builds, sandbox {'on' if SANDBOX else 'off'}, {RUNS} runs each (alternating), -j{JOBS} unless noted; "
      "mean seconds, ms per derivation\n")
print(f"{'graph':36} {'nix s':>8} {'ferrix s':>9} {'nix ms/drv':>11} {'ferrix ms/drv':>14} {'nix/ferrix':>11}")
for r in results:
    m = {t: statistics.mean(v) for t, v in r["times"].items()}
    per = {t: 1000 * m[t] / r["count"] for t in m}
    print(f"{r['label']:36} {m['nix']:8.3f} {m['ferrix']:9.3f} {per['nix']:11.1f} {per['ferrix']:14.1f}"
          f" {m['nix'] / m['ferrix']:10.2f}x")
print("\nper-derivation overhead: (tool time - the builders run alone) / derivations")
print(f"{'graph':36} {'builders s':>10} {'nix ms/drv':>11} {'ferrix ms/drv':>14} {'nix/ferrix':>11}")
for r in results:
    if "baseline" not in r:
        continue
    m = {t: statistics.mean(v) for t, v in r["times"].items()}
    over = {t: 1000 * (m[t] - r["baseline"]) / r["count"] for t in m}
    print(f"{r['label']:36} {r['baseline']:10.3f} {over['nix']:11.2f} {over['ferrix']:14.2f}"
          f" {over['nix'] / over['ferrix']:10.2f}x")
r = results[-1]
lb = r["lower_bound"]
print(f"\nrandom DAG: lower bound max(critical path, work/8) = {lb:.2f} s; makespan / bound: "
      + ", ".join(f"{t} {statistics.mean(v) / lb:.3f}" for t, v in r["times"].items()))
print("goals: per-derivation overhead nix/ferrix >= 5 (sandbox off), >= 3 (on); 8 x sleep 1 with -j8 "
      "<= 1.1 s; random DAG makespan <= 1.05 x bound")
