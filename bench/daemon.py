#!/usr/bin/env python3
"""The daemon, Ferrix's against real Nix 2.8's, each on a store of its own under the same
work directory: the round trip of one validity query, queries per second on 1 and 16
connections (a small worker-protocol client below, so that no client process start-up is
measured), and 200 trivial derivations built through the daemon by real Nix's nix-store.
Called by bench/daemon.sh; see bench/README.md."""

import multiprocessing
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time

WORK = os.environ["FERRIX_BENCH_WORK"]
RUNS = int(os.environ.get("FERRIX_BENCH_RUNS", "3"))
DAEMONS = {"nix": os.environ["NIX_DAEMON_BIN"], "ferrix": os.environ["FERRIX_DAEMON_BIN"]}
NIX_STORE = os.environ["NIX_STORE_BIN"]
NIX_INSTANTIATE = os.environ["NIX_INSTANTIATE_BIN"]
QUERIES = int(os.environ.get("FERRIX_BENCH_QUERIES", "20000"))

MAGIC_1, MAGIC_2, LAST = 0x6E697863, 0x6478696F, 0x616C7473
VERSION = (1 << 8) | 34  # what Nix 2.8 speaks


def env_for(tool):
    root = f"{WORK}/{tool}"
    return dict(os.environ, NIX_STORE_DIR=f"{root}/store", NIX_STATE_DIR=f"{root}/state",
                NIX_LOG_DIR=f"{root}/log", NIX_CONF_DIR=f"{WORK}/etc", HOME=f"{root}/home")


class Client:
    """One worker-protocol session: the handshake, then IsValidPath as often as asked."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rwb", buffering=1 << 16)
        self.put(MAGIC_1)
        self.f.flush()
        assert self.get() == MAGIC_2
        server = self.get()
        v = min(server & 0xFFFF, VERSION)
        self.put(VERSION)
        self.put(0)  # no CPU affinity (>= 1.14)
        self.put(0)  # reserveSpace (>= 1.11)
        self.f.flush()
        if v >= (1 << 8 | 33):
            self.string()  # the daemon's Nix version
        if v >= (1 << 8 | 35):
            self.get()  # trusted
        self.work()

    def put(self, n):
        self.f.write(struct.pack("<Q", n))

    def get(self):
        return struct.unpack("<Q", self.f.read(8))[0]

    def string(self):
        n = self.get()
        data = self.f.read((n + 7) // 8 * 8)
        return data[:n]

    def put_string(self, b):
        self.put(len(b))
        self.f.write(b + b"\0" * ((8 - len(b) % 8) % 8))

    def work(self):
        while True:
            m = self.get()
            if m == LAST:
                return
            sys.exit(f"unexpected message {m:#x} from the daemon")

    def valid(self, path):
        self.put(1)  # IsValidPath
        self.put_string(path)
        self.f.flush()
        self.work()
        return self.get() != 0


def queries(args):
    sock, path, n = args
    c = Client(sock)
    t = time.perf_counter()
    for _ in range(n):
        assert c.valid(path)
    return time.perf_counter() - t


def cpu_seconds(pid):
    """CPU time of the daemon and of its children already reaped (Nix forks one per
    connection)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def server_cpu_per_query(p, sock, path):
    """The daemon's own CPU time per validity query on one connection, in µs: what the
    server costs, whatever the client's speed."""
    before = cpu_seconds(p.pid)
    queries((sock, path, QUERIES))
    # Nix's connection process is reaped (and counted) once the client has gone.
    time.sleep(0.5)
    return (cpu_seconds(p.pid) - before) / QUERIES * 1e6


def start(tool):
    root = f"{WORK}/{tool}"
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(f"{root}/home")
    e = env_for(tool)
    p = subprocess.Popen([DAEMONS[tool]], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = f"{root}/state/daemon-socket/socket"
    for _ in range(1000):
        if os.path.exists(sock):
            try:
                socket.socket(socket.AF_UNIX).connect(sock)
                break
            except OSError:
                pass
        time.sleep(0.01)
    return p, sock, e


def builds(tool, sock, e):
    n = 200
    expr = "[ " + " ".join(
        f'(derivation {{ name = "t{i}"; system = builtins.currentSystem; builder = "/bin/sh"; '
        f'args = [ "-c" "echo {i} > $out" ]; }})' for i in range(n)) + " ]"
    url = f"unix://{sock}"
    drvs = subprocess.run([NIX_INSTANTIATE, "--store", url, "-E", expr], env=e, check=True,
                          capture_output=True, text=True).stdout.split()
    t = time.perf_counter()
    subprocess.run([NIX_STORE, "--store", url, "-r", "-j", "2", *drvs], env=e, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    os.makedirs(f"{WORK}/etc", exist_ok=True)
    with open(f"{WORK}/etc/nix.conf", "w") as f:
        # The builds run two at a time in both daemons (Nix takes the client's -j 2, Ferrix its
        # own setting: one Engine for every client).
        f.write("sandbox = false\nbuild-users-group =\nsubstituters =\nmax-jobs = 2\n")
    res = {t: {"rtt": [], "cpu": [], "q1": [], "q16": [], "build": []} for t in DAEMONS}
    for i in range(RUNS):
        for tool in (["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]):
            p, sock, e = start(tool)
            try:
                f = f"{WORK}/{tool}/file"
                with open(f, "w") as fh:
                    fh.write("x\n")
                path = subprocess.run([NIX_STORE, "--store", f"unix://{sock}", "--add", f], env=e,
                                      check=True, capture_output=True, text=True).stdout.strip()
                one = queries((sock, path.encode(), 2000))
                res[tool]["rtt"].append(one / 2000 * 1e6)
                res[tool]["cpu"].append(server_cpu_per_query(p, sock, path.encode()))
                res[tool]["q1"].append(QUERIES / queries((sock, path.encode(), QUERIES)))
                with multiprocessing.Pool(16) as pool:
                    t = time.perf_counter()
                    pool.map(queries, [(sock, path.encode(), QUERIES // 16)] * 16)
                    res[tool]["q16"].append(QUERIES // 16 * 16 / (time.perf_counter() - t))
                res[tool]["build"].append(builds(tool, sock, e))
            finally:
                p.terminate()
                p.wait()
    m = {t: {k: statistics.mean(v) for k, v in r.items()} for t, r in res.items()}
    print(f"{RUNS} runs each, alternating; {QUERIES} IsValidPath queries per measurement\n")
    print(f"{'':34} {'nix':>10} {'ferrix':>10} {'ferrix/nix':>11}")
    for k, label, unit in [("rtt", "validity query round trip", "µs"),
                           ("cpu", "daemon CPU per query (µs)", ""),
                           ("q1", "queries/s, 1 connection", ""),
                           ("q16", "queries/s, 16 connections", ""),
                           ("build", "200 trivial builds (s)", "")]:
        print(f"{label:34} {m['nix'][k]:10.1f} {m['ferrix'][k]:10.1f} {m['ferrix'][k] / m['nix'][k]:11.2f}")
    print("\ngoals (issue 14): queries/s >= 3x Nix's; per-build overhead <= 1/5 of Nix's")


if __name__ == "__main__":
    main()
