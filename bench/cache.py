#!/usr/bin/env python3
"""Binary caches, Ferrix against real Nix 2.8, as ratios. Called by bench/cache.sh.

A closure of PATHS store paths (each a directory of files, part random and part text, so
that it compresses about 2:1; MIB MiB in all) is added by real Nix. Then, alternating
between the tools, each after a `sync`:
  write C   `nix copy --to file://DIR?compression=C` and `ferrix copy --to …` (C = none,
            zstd, xz), signed, into a fresh cache
  read C    the closure deleted from the store, then `nix copy --from file://DIR` and
            `ferrix copy --from …` from the cache the same tool wrote, signature checked
MB/s are of NAR bytes.
"""

import os
import shutil
import statistics
import subprocess
import time

import closure

WORK = os.environ["FERRIX_BENCH_WORK"]
FERRIX = os.environ["FERRIX_BIN"]
RUNS = int(os.environ.get("FERRIX_BENCH_RUNS", "3"))
PATHS = int(os.environ.get("FERRIX_BENCH_PATHS", "40"))
MIB = int(os.environ.get("FERRIX_BENCH_MIB", "200"))
ENV = closure.store_env(WORK)


def run(args, **kw):
    return subprocess.run(args, env=ENV, check=True, capture_output=True, text=True, **kw)


def wipe(path):
    if os.path.exists(path):
        subprocess.run(["chmod", "-R", "u+w", path], check=True)
        shutil.rmtree(path)


def timed(args):
    os.sync()
    t = time.perf_counter()
    run(args)
    return time.perf_counter() - t


paths = closure.make_closure(WORK, ENV, PATHS, MIB)
nar_bytes = sum(int(run(["nix-store", "-q", "--size", p]).stdout) for p in paths)
run(["nix-store", "--generate-binary-cache-key", "bench-1", f"{WORK}/sk", f"{WORK}/pk"])
pk = open(f"{WORK}/pk").read().strip()
sk = f"{WORK}/sk"
key_opts = ["--option", "trusted-public-keys", pk]
tools = {
    "nix": lambda *a: ["nix", *a],
    "ferrix": lambda *a: [FERRIX, *a],
}
results = {}
for c in ["none", "zstd", "xz"]:
    for what in ["write", "read"]:
        results[(what, c)] = {t: [] for t in tools}
    for i in range(RUNS):
        for tool in (["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]):
            cache = f"{WORK}/cache-{tool}-{c}"
            wipe(cache)
            url = f"file://{cache}"
            results[("write", c)][tool].append(
                timed(tools[tool]("copy", "--to", f"{url}?compression={c}&secret-key={sk}", *paths)))
            run(["nix-store", "--delete", *paths])
            read = tools[tool](*key_opts, "copy", "--from", url, *paths) if tool == "ferrix" else \
                tools[tool]("copy", *key_opts, "--from", url, *paths)
            results[("read", c)][tool].append(timed(read))
            run(["nix-store", "--check-validity", *paths])
print(f"\nBinary caches: {PATHS} paths, {nar_bytes / 2**20:.0f} MiB of NAR, {RUNS} runs each "
      "(alternating), mean seconds and MB/s of NAR\n")
print(f"{'case':14} {'nix s':>8} {'ferrix s':>9} {'nix MB/s':>9} {'ferrix MB/s':>12} {'nix/ferrix':>11}")
for (what, c), r in results.items():
    m = {t: statistics.mean(v) for t, v in r.items()}
    mbs = {t: nar_bytes / 1e6 / m[t] for t in m}
    print(f"{what + ' ' + c:14} {m['nix']:8.3f} {m['ferrix']:9.3f} {mbs['nix']:9.0f} {mbs['ferrix']:12.0f} "
          f"{m['nix'] / m['ferrix']:10.2f}x")
print("\ngoals (issue 12): writing >= 2x Nix; substitution >= 3x Nix")
