"""What cache.py and substitute.py share: an isolated store's environment and the closure
of compressible test paths real Nix adds to it."""

import os
import random
import subprocess


def store_env(work):
    """The environment of real Nix and Ferrix on the store under `work`, and nothing of
    the caller's Nix settings."""
    env = dict(os.environ, NIX_STORE_DIR=f"{work}/s/store", NIX_STATE_DIR=f"{work}/s/state",
               NIX_LOG_DIR=f"{work}/s/log", NIX_CONF_DIR=f"{work}/etc", HOME=f"{work}/home")
    for k in ["NIX_PATH", "NIX_REMOTE", "XDG_CACHE_HOME"]:
        env.pop(k, None)
    os.makedirs(f"{work}/home", exist_ok=True)
    return env


def make_closure(work, env, paths, mib):
    """`paths` store paths added by real Nix, each a directory of 5 files, half random bytes
    and half text (so they compress about 2:1), `mib` MiB in all. Their store paths."""
    rng = random.Random(1)
    words = [("".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 9)))) for _ in range(500)]
    per_file = mib * (1 << 20) // (paths * 5)
    out = []
    for i in range(paths):
        d = f"{work}/src/p{i}"
        os.makedirs(d)
        for j in range(5):
            half = per_file // 2
            text = " ".join(rng.choice(words) for _ in range(half // 5)).encode()[:half]
            with open(f"{d}/f{j}", "wb") as f:
                f.write(rng.randbytes(per_file - len(text)) + text)
        out.append(subprocess.run(["nix-store", "--add", d], env=env, check=True,
                                  capture_output=True, text=True).stdout.strip())
    return out
