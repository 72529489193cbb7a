#!/usr/bin/env python3
"""The daemon, Ferrix's against real Nix 2.8's, each on a store of its own under the same
work directory: the round trip of one validity query, queries per second on 1 and 16
connections (a native load client, crates/ferrix-daemon/examples/query-load.rs, so that
neither client start-up nor a slow client is measured), the same for a daemon that does no
work (the floor), and 200 trivial derivations built through the daemon by real Nix's
nix-store, with the per-build overhead beyond the builders run alone.
Called by bench/daemon.sh; see bench/README.md."""

import os
import shutil
import socket
import statistics
import subprocess
import time

WORK = os.environ["FERRIX_BENCH_WORK"]
RUNS = int(os.environ.get("FERRIX_BENCH_RUNS", "3"))
DAEMONS = {"nix": os.environ["NIX_DAEMON_BIN"], "ferrix": os.environ["FERRIX_DAEMON_BIN"]}
NIX_STORE = os.environ["NIX_STORE_BIN"]
NIX_INSTANTIATE = os.environ["NIX_INSTANTIATE_BIN"]
QUERIES = int(os.environ.get("FERRIX_BENCH_QUERIES", "20000"))

QUERY_LOAD = os.environ["QUERY_LOAD_BIN"]
NULL_DAEMON = os.environ["NULL_DAEMON_BIN"]


def env_for(tool):
    root = f"{WORK}/{tool}"
    return dict(os.environ, NIX_STORE_DIR=f"{root}/store", NIX_STATE_DIR=f"{root}/state",
                NIX_LOG_DIR=f"{root}/log", NIX_CONF_DIR=f"{WORK}/etc", HOME=f"{root}/home")


def qps(sock, path, n, conns):
    """Queries per second: `n` IsValidPath queries over `conns` connections at once, by the
    native load client (crates/ferrix-daemon/examples/query-load.rs), each connection
    waiting for every answer as Nix's clients do."""
    out = subprocess.run([QUERY_LOAD, sock, path, str(n), str(conns)], check=True,
                         capture_output=True, text=True).stdout
    return float(out)


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
    qps(sock, path, QUERIES, 1)
    # Nix's connection process is reaped (and counted) once the client has gone.
    time.sleep(0.5)
    return (cpu_seconds(p.pid) - before) / QUERIES * 1e6


TRASH = f"{WORK}/trash"


def start(tool):
    root = f"{WORK}/{tool}"
    if os.path.exists(root):
        # Moved aside, deleted after all runs: on ext4 without a journal, every file created
        # in the next minutes would otherwise be slowed by the inodes just freed (see
        # bench/README.md, build.sh), whichever daemon runs next.
        os.makedirs(TRASH, exist_ok=True)
        os.rename(root, f"{TRASH}/{len(os.listdir(TRASH))}")
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


def builders_alone(n=200, jobs=2):
    """The 200 builders run by themselves, `jobs` at a time, as a build tool at best would:
    what a daemon needs beyond this is its per-build overhead."""
    from concurrent.futures import ThreadPoolExecutor
    out = f"{WORK}/baseline"
    os.makedirs(out, exist_ok=True)
    def one(i):
        subprocess.run(["/bin/sh", "-c", f"echo {i} > {out}/{i}"], env={}, check=True)
    t = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - t


def main():
    os.makedirs(f"{WORK}/etc", exist_ok=True)
    with open(f"{WORK}/etc/nix.conf", "w") as f:
        # The builds run two at a time in both daemons (Nix takes the client's -j 2, Ferrix its
        # own setting: one Engine for every client).
        f.write("sandbox = false\nbuild-users-group =\nsubstituters =\nmax-jobs = 2\n")
    res = {t: {"rtt": [], "cpu": [], "q1": [], "q16": [], "build": []} for t in DAEMONS}
    alone = []
    floor = {"q1": [], "q16": []}
    for i in range(RUNS):
        for tool in (["nix", "ferrix"] if i % 2 == 0 else ["ferrix", "nix"]):
            p, sock, e = start(tool)
            try:
                f = f"{WORK}/{tool}/file"
                with open(f, "w") as fh:
                    fh.write("x\n")
                path = subprocess.run([NIX_STORE, "--store", f"unix://{sock}", "--add", f], env=e,
                                      check=True, capture_output=True, text=True).stdout.strip()
                res[tool]["rtt"].append(1e6 / qps(sock, path, 2000, 1))
                res[tool]["cpu"].append(server_cpu_per_query(p, sock, path))
                res[tool]["q1"].append(qps(sock, path, QUERIES, 1))
                res[tool]["q16"].append(qps(sock, path, QUERIES, 16))
                res[tool]["build"].append(builds(tool, sock, e))
            finally:
                p.terminate()
                p.wait()
        # The floor: a daemon that answers at once without looking at anything.
        sock = f"{WORK}/null.sock"
        p = subprocess.Popen([NULL_DAEMON, sock])
        try:
            for _ in range(1000):
                try:
                    socket.socket(socket.AF_UNIX).connect(sock)
                    break
                except OSError:
                    time.sleep(0.01)
            floor["q1"].append(qps(sock, "/x", QUERIES, 1))
            floor["q16"].append(qps(sock, "/x", QUERIES, 16))
        finally:
            p.terminate()
            p.wait()
        alone.append(builders_alone())
    subprocess.run(["chmod", "-R", "u+w", TRASH], check=False)
    shutil.rmtree(TRASH, ignore_errors=True)
    m = {t: {k: statistics.mean(v) for k, v in r.items()} for t, r in res.items()}
    base = statistics.mean(alone)
    for t in m:
        m[t]["overhead"] = (m[t]["build"] - base) / 200 * 1000
    print(f"{RUNS} runs each, alternating; {QUERIES} IsValidPath queries per measurement\n")
    print(f"{'':34} {'nix':>10} {'ferrix':>10} {'ferrix/nix':>11} {'floor':>10} {'floor/nix':>10}")
    for k, label in [("rtt", "validity query round trip (µs)"),
                     ("cpu", "daemon CPU per query (µs)"),
                     ("q1", "queries/s, 1 connection"),
                     ("q16", "queries/s, 16 connections"),
                     ("build", "200 trivial builds (s)"),
                     ("overhead", "per-build overhead (ms)")]:
        line = f"{label:34} {m['nix'][k]:10.1f} {m['ferrix'][k]:10.1f} {m['ferrix'][k] / m['nix'][k]:11.2f}"
        if k in floor:
            fl = statistics.mean(floor[k])
            line += f" {fl:10.1f} {fl / m['nix'][k]:10.2f}"
        print(line)
    print(f"\nper-build overhead: (build time - the 200 builders run alone, 2 at a time, "
          f"{base:.3f} s) / 200")
    print("floor: a daemon that does no work (crates/ferrix-daemon/examples/null-daemon.rs), "
          "the most any daemon could reach here")
    print("goals (issue 14): queries/s >= 3x Nix's; per-build overhead <= 1/5 of Nix's")


if __name__ == "__main__":
    main()
