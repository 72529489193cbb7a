#!/usr/bin/env python3
"""Substitution and serving, Ferrix against real Nix 2.8, as ratios. Called by
bench/substitute.sh.

A closure of PATHS store paths (each a directory of files, part random and part text, so
that it compresses about 2:1; MIB MiB in all) is added by real Nix, and real Nix writes it
to two signed file:// caches (zstd, xz). Then:

  serve     `ferrix serve-cache` (no compression) sends every NAR of the closure, fetched
            by curl over one connection, then over 8 at once: MB/s of NAR.
  subst     for each cache, as file:// and over http://127.0.0.1 (`ferrix serve-cache --dir`
            serving the directory, the same for both tools): the closure deleted, the narinfo
            disk cache emptied, a `sync`, then `nix-store -r PATHS` of real Nix and of
            Ferrix, alternating, with only that cache as substituter.
  limit     `zstd -d` (and `xz -d`) alone on the same NAR files, to /dev/null.
  one path  one path of BIG_MIB MiB (5 files) from file:// caches real Nix wrote with zstd
            and with xz and `parallel-compression` (so in blocks), each tool alternating.

MB/s are of NAR bytes (what the store receives).
"""

import glob
import os
import shutil
import statistics
import subprocess
import sys
import time

import closure

WORK = os.environ["FERRIX_BENCH_WORK"]
FERRIX = os.environ["FERRIX_BIN"]
FERRIX_STORE = os.environ["FERRIX_STORE_BIN"]
RUNS = int(os.environ.get("FERRIX_BENCH_RUNS", "3"))
PATHS = int(os.environ.get("FERRIX_BENCH_PATHS", "100"))
MIB = int(os.environ.get("FERRIX_BENCH_MIB", "512"))
BIG_MIB = int(os.environ.get("FERRIX_BENCH_BIG_MIB", "128"))
ENV = closure.store_env(WORK)


def run(args, **kw):
    return subprocess.run(args, env=ENV, check=True, capture_output=True, text=True, **kw)


def timed(args, env=ENV):
    os.sync()
    t = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def serve(args):
    """`ferrix serve-cache ARGS` on a free port of 127.0.0.1: the process and its URL."""
    p = subprocess.Popen([FERRIX, "serve-cache", "--listen", "127.0.0.1:0", *args], env=ENV,
                         stderr=subprocess.PIPE, text=True)
    url = p.stderr.readline().strip().rsplit(" ", 1)[-1]
    assert url.startswith("http://127.0.0.1:"), url
    return p, url


def curl_all(urls, conns):
    """Fetch `urls` with `conns` curl processes (each over one kept-alive connection)."""
    groups = [g for g in (urls[i::conns] for i in range(conns)) if g]
    t = time.perf_counter()
    procs = []
    for g in groups:
        args = ["curl", "-sf"]
        for u in g:
            args += [u, "-o", "/dev/null"]
        procs.append(subprocess.Popen(args))
    for p in procs:
        if p.wait() != 0:
            sys.exit("curl failed")
    return time.perf_counter() - t


paths = closure.make_closure(WORK, ENV, PATHS, MIB)
shutil.rmtree(f"{WORK}/src")
nar_bytes = sum(int(run(["nix-store", "-q", "--size", p]).stdout) for p in paths)
mb = nar_bytes / 1e6
run(["nix-store", "--generate-binary-cache-key", "bench-1", f"{WORK}/sk", f"{WORK}/pk"])
pk = open(f"{WORK}/pk").read().strip()
print(f"\n{PATHS} paths, {nar_bytes / 2**20:.0f} MiB of NAR, {RUNS} runs each\n", flush=True)

# Serving, from the store as it is now.
serve_proc, base = serve([])
try:
    urls = []
    for p in paths:
        h = os.path.basename(p).split("-")[0]
        info = subprocess.run(["curl", "-sf", f"{base}/{h}.narinfo"], check=True,
                              capture_output=True, text=True).stdout
        urls.append(base + "/" + next(l[5:] for l in info.splitlines() if l.startswith("URL: ")))
    curl_all(urls, 1)  # warm the page cache
    for conns in [1, 8]:
        ts = [curl_all(urls, conns) for _ in range(RUNS)]
        print(f"serve-cache, {conns} connection(s): {statistics.mean(ts):.3f} s, "
              f"{mb / statistics.mean(ts):.0f} MB/s (goal >= 500 MB/s on one)", flush=True)
finally:
    serve_proc.kill()
    serve_proc.wait()

for c in ["zstd", "xz"]:
    run(["nix", "copy", "--to", f"file://{WORK}/cache-{c}?compression={c}&secret-key={WORK}/sk", *paths])

# The limit: decompressing the same NARs alone.
limits = {}
for c, cmd in [("zstd", ["zstd", "-d", "-c", "-q"]), ("xz", ["xz", "-d", "-c"])]:
    files = sorted(glob.glob(f"{WORK}/cache-{c}/nar/*"))
    ts = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(cmd + files, check=True, stdout=subprocess.DEVNULL)
        ts.append(time.perf_counter() - t)
    limits[c] = statistics.mean(ts)
    print(f"{c} -d alone: {limits[c]:.3f} s, {mb / limits[c]:.0f} MB/s", flush=True)

tools = {"nix": "nix-store", "ferrix": FERRIX_STORE}
results = {}
for c in ["zstd", "xz"]:
    # The cache directory real Nix wrote, served over HTTP by `ferrix serve-cache --dir`
    # (the same server for both tools).
    server, http_url = serve(["--dir", f"{WORK}/cache-{c}"])
    try:
        for transport in ["file", "http"]:
            url = f"file://{WORK}/cache-{c}" if transport == "file" else http_url
            times = {t: [] for t in tools}
            for i in range(RUNS):
                for tool in (["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]):
                    run(["nix-store", "--delete", *paths])
                    shutil.rmtree(f"{WORK}/home/.cache", ignore_errors=True)
                    times[tool].append(timed([tools[tool], "-r", *paths, "-j0",
                                              "--option", "substituters", url,
                                              "--option", "trusted-public-keys", pk]))
                    run(["nix-store", "--check-validity", *paths])
            results[(c, transport)] = {t: statistics.mean(v) for t, v in times.items()}
            m = results[(c, transport)]
            print(f"substitute {c} {transport}: nix {m['nix']:.3f} s ({mb / m['nix']:.0f} MB/s), "
                  f"ferrix {m['ferrix']:.3f} s ({mb / m['ferrix']:.0f} MB/s), "
                  f"{m['nix'] / m['ferrix']:.2f}x Nix, {limits[c] / m['ferrix']:.2f}x {c} -d alone",
                  flush=True)
    finally:
        server.kill()
        server.wait()

# One large path: what is left when a closure's other paths are in, and where the work
# of one path (decompressing, hashing, writing) must overlap.
os.makedirs(f"{WORK}/big")
big = closure.make_closure(f"{WORK}/big", ENV, 1, BIG_MIB)[0]
shutil.rmtree(f"{WORK}/big/src")
big_mb = int(run(["nix-store", "-q", "--size", big]).stdout) / 1e6
for c, extra in [("zstd", ""), ("xz", "&parallel-compression=true")]:
    url = f"file://{WORK}/big/cache-{c}"
    run(["nix", "copy", "--to", f"{url}?compression={c}{extra}&secret-key={WORK}/sk", big])
    times = {t: [] for t in tools}
    for i in range(RUNS):
        for tool in (["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]):
            run(["nix-store", "--delete", big])
            shutil.rmtree(f"{WORK}/home/.cache", ignore_errors=True)
            times[tool].append(timed([tools[tool], "-r", big, "-j0",
                                      "--option", "substituters", url,
                                      "--option", "trusted-public-keys", pk]))
            run(["nix-store", "--check-validity", big])
    m = {t: statistics.mean(v) for t, v in times.items()}
    print(f"one path of {big_mb:.0f} MB, {c}{' in blocks' if extra else ''} file: "
          f"nix {m['nix']:.3f} s ({big_mb / m['nix']:.0f} MB/s), "
          f"ferrix {m['ferrix']:.3f} s ({big_mb / m['ferrix']:.0f} MB/s), "
          f"{m['nix'] / m['ferrix']:.2f}x Nix", flush=True)

print("\ngoals (issue 12): substitution >= 3x Nix and >= 0.8x zstd -d alone; "
      "serving >= 500 MB/s on one connection")
