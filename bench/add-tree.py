#!/usr/bin/env python3
"""`nix-store --add` of a big tree, Ferrix against real Nix 2.8 (the binary-cache issue's
point 7). Called by bench/add-tree.sh.

The tree: FILES files (default 5169) of log-uniform sizes from 256 B to 4 MiB, MIB MiB in
all (default 1024), in 40 x 7 directories, pseudo-random bytes. Each measured run adds it
to a fresh store of its own (the database made first, so only the add is timed), after a
`sync`; runs alternate between the tools. Old stores are deleted only after all runs: on
ext4 without a journal, files made after a mass deletion are slower to create. Ferrix has
the tree on disk before it registers it (Nix 2.8 does not sync).
"""

import os
import random
import shutil
import statistics
import subprocess
import time

WORK = os.environ["FERRIX_BENCH_WORK"]
FERRIX_STORE = os.environ["FERRIX_STORE_BIN"]
RUNS = int(os.environ.get("FERRIX_BENCH_RUNS", "3"))
FILES = int(os.environ.get("FERRIX_BENCH_FILES", "5169"))
MIB = int(os.environ.get("FERRIX_BENCH_MIB", "1024"))
TOOLS = {"nix": "nix-store", "ferrix": FERRIX_STORE}


def make_tree(root):
    rng = random.Random(7)
    sizes = [int(2 ** rng.uniform(8, 22)) for _ in range(FILES)]
    scale = MIB * (1 << 20) / sum(sizes)
    sizes = [max(1, int(s * scale)) for s in sizes]
    block = rng.randbytes(1 << 22)
    for i, s in enumerate(sizes):
        d = f"{root}/d{i % 40}/e{i % 7}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i}", "wb") as f:
            off = (i * 7919) % (1 << 21)
            while s > 0:
                k = min(s, (1 << 22) - off)
                f.write(block[off:off + k])
                s -= k
                off = 0
    return sum(sizes)


def env_for(store):
    env = dict(os.environ, NIX_STORE_DIR=f"{store}/store", NIX_STATE_DIR=f"{store}/state",
               NIX_LOG_DIR=f"{store}/log", NIX_CONF_DIR=f"{WORK}/etc", HOME=f"{store}/home")
    env.pop("NIX_PATH", None)
    env.pop("NIX_REMOTE", None)
    return env


def add(tool, n):
    store = f"{WORK}/s-{tool}-{n}"
    env = env_for(store)
    os.makedirs(f"{store}/home")
    first = subprocess.run([TOOLS[tool], "--add", f"{WORK}/etc/nix.conf"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    subprocess.run([TOOLS[tool], "-q", "--hash", first], env=env, check=True, capture_output=True)
    os.sync()
    t = time.perf_counter()
    out = subprocess.run([TOOLS[tool], "--add", f"{WORK}/tree"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    took = time.perf_counter() - t
    nar_hash = subprocess.run(["nix-store", "-q", "--hash", out], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()
    return took, nar_hash, env


total = make_tree(f"{WORK}/tree")
os.sync()
print(f"\nnix-store --add of a tree of {FILES} files, {total / 2**20:.0f} MiB, {RUNS} runs each "
      "(alternating), each into a fresh store after a sync\n", flush=True)
times = {t: [] for t in TOOLS}
hashes = set()
for i in range(RUNS + 1):
    for tool in (["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]):
        took, nar_hash, env = add(tool, i)
        hashes.add(nar_hash)
        if i == 0:
            # The warm-up: Ferrix's store passes real Nix's check of every file.
            subprocess.run(["nix-store", "--verify", "--check-contents"], env=env, check=True,
                           capture_output=True)
            continue
        times[tool].append(took)
        print(f"{tool}: {took:.3f} s", flush=True)
assert len(hashes) == 1, f"the tools stored different trees: {hashes}"
m = {t: statistics.mean(v) for t, v in times.items()}
med = {t: statistics.median(v) for t, v in times.items()}
print(f"\nmedians: nix {med['nix']:.3f} s, ferrix {med['ferrix']:.3f} s, "
      f"ferrix/nix {med['ferrix'] / med['nix']:.2f}")
print(f"means: nix {m['nix']:.3f} s ({total / 1e6 / m['nix']:.0f} MB/s), "
      f"ferrix {m['ferrix']:.3f} s ({total / 1e6 / m['ferrix']:.0f} MB/s): "
      f"ferrix/nix {m['ferrix'] / m['nix']:.2f} (goal <= 0.6)")
