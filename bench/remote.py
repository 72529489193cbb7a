#!/usr/bin/env python3
"""Remote builds, Ferrix against real Nix 2.8 as the master, as ratios. Called by
bench/remote.sh.

The machines are real Nix 2.8 (`nix-store --serve --write --store DIR`) reached as
`ssh://localhost?remote-store=DIR`, which both tools run here without ssh; each has a store
of its own, wiped before every run with the master's. The master runs `nix-store -r -j0`
with `--builders`, so everything is built remotely. Runs alternate between the tools; only
the realisation is timed.

FERRIX_BENCH_SET=mounted runs only the mounted machines.

Graphs:
  trivial N   N independent derivations (`echo > $out`) through one machine (max-jobs 4);
              40 of them also over ssh-ng:// (`nix-daemon --stdio` there), and through a
              Ferrix machine (`ssh://` with remote-program = Ferrix's nix-store) for both masters;
              40 and 100 through a "mounted" real Nix machine: its own store bind-mounted at the
              master's store path in a mount namespace of its own (root only), so it builds
              without the sandbox a chroot store forces
  sleep16 M   16 derivations sleeping 1 s over M machines (max-jobs 4 each): the ideal is
              ceil(16 / 4M) s
"""

import math
import os
import shutil
import statistics
import subprocess
import time

WORK = os.environ["FERRIX_BENCH_WORK"]
RUNS = int(os.environ.get("FERRIX_BENCH_RUNS", "3"))
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
    # The machines run real Nix's nix-store, never the links.
    PATH="/usr/bin:/bin",
)
ENV.pop("NIX_PATH", None)
ENV.pop("NIX_REMOTE", None)

PRELUDE = """
let mk = name: script: derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
}; in
"""


def trivial(n):
    return PRELUDE + "[ " + " ".join(f'(mk "t{i}" "echo {i} > $out")' for i in range(n)) + " ]"


def sleepers(n):
    return PRELUDE + "[ " + " ".join(f'(mk "s{i}" "/bin/sleep 1; echo {i} > $out")' for i in range(n)) + " ]"


FERRIX_MACHINE = os.environ["FERRIX_STORE_BIN"]


def mounted(k):
    """A real Nix machine whose own store is mounted at the master's store path, in a mount
    namespace of its own (state and logs elsewhere too): it builds as an ordinary machine
    does, without the sandbox a chroot store forces."""
    path = f"{WORK}/mounted-{k}.sh"
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
mkdir -p {WORK}/m{k}/store {WORK}/m{k}/state {WORK}/m{k}/log
exec unshare -m /bin/sh -c 'mount --bind {WORK}/m{k}/store {STORE}/store && NIX_STATE_DIR={WORK}/m{k}/state NIX_LOG_DIR={WORK}/m{k}/log exec /usr/bin/nix-store "$@"' sh "$@"
""")
    os.chmod(path, 0o755)
    return path


def machines(m, scheme="ssh"):
    if scheme == "mounted":
        return ";".join(f"ssh://localhost?remote-program={mounted(k)} - - 4 1" for k in range(m))
    # scheme "ferrix": a Ferrix machine over ssh:// (its `nix-store --serve`).
    if scheme == "ferrix":
        return ";".join(f"ssh://localhost?remote-program={FERRIX_MACHINE}&remote-store={WORK}/m{k} - - 4 1"
                        for k in range(m))
    return ";".join(f"{scheme}://localhost?remote-store={WORK}/m{k} - - 4 1" for k in range(m))


TRASH = f"{WORK}/trash"


def empty_trash():
    if os.path.exists(TRASH):
        subprocess.run(["chmod", "-R", "u+w", TRASH], check=True)
        shutil.rmtree(TRASH)


def wipe():
    # The last run's stores (the master's and the machines') are moved aside and deleted
    # after all runs, as build.py does: on ext4 without a journal, deleting thousands of
    # files here would slow every file the next run creates, whichever tool runs it.
    os.makedirs(TRASH, exist_ok=True)
    for d in os.listdir(WORK):
        if d == "s" or (d.startswith("m") and os.path.isdir(f"{WORK}/{d}")):
            os.rename(f"{WORK}/{d}", f"{TRASH}/{len(os.listdir(TRASH))}")
    os.makedirs(f"{STORE}/home")


def realise(tool, expr, m, scheme):
    wipe()
    path = f"{WORK}/graph.nix"
    with open(path, "w") as f:
        f.write(expr)
    drvs = subprocess.run([INSTANTIATE, path], env=ENV, capture_output=True, text=True,
                          check=True).stdout.split()
    os.sync()
    t = time.perf_counter()
    r = subprocess.run([TOOLS[tool], "-r", "-j0", "--builders", machines(m, scheme), *drvs], env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{r.stderr[-3000:]}")
    return took


def measure(label, expr, count, m, scheme="ssh"):
    print(f"== {label}", flush=True)
    realise("nix", expr, m, scheme)  # warm-up
    realise("ferrix", expr, m, scheme)
    times = {t: [] for t in TOOLS}
    for i in range(RUNS):
        for tool in (["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]):
            times[tool].append(realise(tool, expr, m, scheme))
    return {"label": label, "count": count, "machines": m, "times": times}


SET = os.environ.get("FERRIX_BENCH_SET", "all")
results = []
for n in (40, 100):
    if SET == "mounted":
        # Only the mounted machines (FERRIX_BENCH_SET=mounted).
        break
    results.append(measure(f"{n} trivial, 1 machine", trivial(n), n, 1))
if SET != "mounted":
    results.append(measure("40 trivial, 1 ssh-ng machine", trivial(40), 40, 1, "ssh-ng"))
    results.append(measure("40 trivial, 1 Ferrix machine", trivial(40), 40, 1, "ferrix"))
for n in (40, 100):
    results.append(measure(f"{n} trivial, 1 mounted machine", trivial(n), n, 1, "mounted"))
for m in (1, 2, 3) if SET != "mounted" else ():
    r = measure(f"16 x sleep 1, {m} machine(s)", sleepers(16), 16, m)
    r["ideal"] = math.ceil(16 / (4 * m))
    results.append(r)
wipe()
empty_trash()

print(f"\nRemote builds (master -j0, real Nix 2.8 machines with max-jobs 4), {RUNS} runs each "
      "(alternating); mean seconds\n")
print(f"{'graph':30} {'nix s':>8} {'ferrix s':>9} {'nix ms/drv':>11} {'ferrix ms/drv':>14} "
      f"{'ferrix/nix':>11} {'vs ideal':>18}")
for r in results:
    mean = {t: statistics.mean(v) for t, v in r["times"].items()}
    per = {t: 1000 * mean[t] / r["count"] for t in mean}
    ideal = ""
    if "ideal" in r:
        ideal = f"nix {mean['nix'] / r['ideal']:.2f} ferrix {mean['ferrix'] / r['ideal']:.2f}"
    print(f"{r['label']:30} {mean['nix']:8.3f} {mean['ferrix']:9.3f} {per['nix']:11.1f} "
          f"{per['ferrix']:14.1f} {mean['ferrix'] / mean['nix']:11.3f} {ideal:>18}")
print("\ngoals: ferrix/nix <= 0.1 on the trivial sets; sleep-bound spreading within 1.15 x ideal")
