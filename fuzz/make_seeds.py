#!/usr/bin/env python3
"""Write the seed inputs of fuzz/regressions/ (run once; the files are committed).

Usage: python3 fuzz/make_seeds.py [VECTORS_DIR]   (default /work/shared/vectors)

File names say what the regression test expects: `ok-*` must be accepted, `err-*` refused
with an error. Inputs found by fuzzing are added as `crash-*` (refused, never a panic) or,
when they must be accepted, renamed to `ok-*`.
"""

import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VEC = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/vectors"
OUT = os.path.join(HERE, "regressions")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def vec(*parts):
    with open(os.path.join(VEC, *parts), "rb") as f:
        return f.read()


def u64(n):
    return struct.pack("<Q", n)


def framed(s):
    if isinstance(s, str):
        s = s.encode()
    return u64(len(s)) + s + b"\0" * (-len(s) % 8)


def nar_file(contents, executable=False):
    out = framed("nix-archive-1") + framed("(") + framed("type") + framed("regular")
    if executable:
        out += framed("executable") + framed("")
    return out + framed("contents") + framed(contents) + framed(")")


def nar_dir(entries):
    """entries: list of (name, node bytes without the magic), sorted by the caller."""
    out = framed("nix-archive-1") + framed("(") + framed("type") + framed("directory")
    for name, node in entries:
        out += framed("entry") + framed("(") + framed("name") + framed(name)
        out += framed("node") + node + framed(")")
    return out + framed(")")


def node_of(nar):
    return nar[len(framed("nix-archive-1")):]


def export(paths):
    """paths: list of (store path, NAR bytes, [references], deriver or '')."""
    out = b""
    for path, nar, refs, deriver in paths:
        out += u64(1) + nar + u64(0x4558494E) + framed(path)
        out += u64(len(refs)) + b"".join(framed(r) for r in refs)
        out += framed(deriver) + u64(0)
    return out + u64(0)


# --- nar ---------------------------------------------------------------------------------
for name in ["empty-directory", "empty-regular", "executable-file", "mixed-tree",
             "symlink-relative", "sort-order"]:
    put("nar", f"ok-{name}.nar", vec("nar", f"{name}.nar"))
for name in ["bad-magic", "duplicate-entries", "unsorted-entries", "name-dotdot",
             "name-with-slash", "name-empty", "nonzero-padding", "truncated-contents",
             "executable-marker-nonempty"]:
    put("nar", f"err-{name}.nar", vec("nar", "invalid", f"{name}.nar"))
put("nar", "err-trailing-data.nar", vec("nar", "empty-regular.nar") + b"\0" * 8)

# --- aterm -------------------------------------------------------------------------------
drvs = {
    "simple": "drv/simple/drvs/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv",
    "env-escapes": "drv/env-escapes/drvs/qwz2941mpq5m3ibizlzxpprsa6jkanyg-env-escapes.drv",
    "multiple-outputs": "drv/multiple-outputs/drvs/sbd99wn1xpxx47014l3iz2z10nkfmh4m-multi.drv",
    "fod-recursive-sha256":
        "drv/fod-recursive-sha256/drvs/q21jw5hx5lpwhcvxfn4lhyc6q9b3h50x-fetched-tree.drv",
    "chain-c": "drv/chain-3-deep/drvs/spmgz2isv4yigxvc80iv9kzzx3srqrkb-chain-c.drv",
}
for name, p in drvs.items():
    put("aterm", f"ok-{name}.drv", vec(*p.split("/")))
simple = vec(*drvs["simple"].split("/"))
put("aterm", "err-truncated.drv", simple[:-1])
put("aterm", "err-path-outside-store.drv", simple.replace(b"/nix/store/94f9", b"/tmp/store/94f9", 1))
put("aterm", "err-bad-escape-end.drv", b'Derive([("out","\\')
put("aterm", "err-duplicate-output.drv", simple.replace(
    b'[("out","/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple","","")]',
    b'[("out","/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple","",""),'
    b'("out","/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple","","")]'))

# --- narinfo -----------------------------------------------------------------------------
ni = vec("narinfo", "cache-none", "4gy6rsxh1dq1z1nsm3pz2ppdmqw79k65.narinfo")
put("narinfo", "ok-cache-none.narinfo", ni)
for d in ["cache-xz", "cache-zstd"]:
    files = sorted(f for f in os.listdir(os.path.join(VEC, "narinfo", d)) if f.endswith(".narinfo"))
    put("narinfo", f"ok-{d}.narinfo", vec("narinfo", d, files[0]))
put("narinfo", "ok-minimal.narinfo",
    "StorePath: /nix/store/4gy6rsxh1dq1z1nsm3pz2ppdmqw79k65-x\nURL: u\n"
    "NarHash: sha256:02vmsibhz5072cb0lma806rrlblv9fig5r060fd6dwyc67bak8xp\nNarSize: 1\n")
put("narinfo", "err-no-final-newline.narinfo", ni.rstrip(b"\n"))
put("narinfo", "err-zero-narsize.narinfo", ni.replace(b"NarSize: 1400", b"NarSize: 0"))
put("narinfo", "err-duplicate-field.narinfo", ni + b"URL: again\n")
put("narinfo", "err-missing-narhash.narinfo",
    b"".join(l for l in ni.splitlines(True) if not l.startswith(b"NarHash")))
put("narinfo", "err-bad-reference.narinfo", ni.replace(b"References: ", b"References: x"))
put("narinfo", "err-syntax.narinfo", b"StorePath /nix/store/x\n")

# --- nix_conf (includes resolve in the target's scratch directory) ----------------------
put("nix_conf", "ok-settings.conf",
    "# comment\nsandbox = relaxed  # trailing\nmax-jobs = auto\ncores = +4\n"
    "substituters = https://a https://b\nextra-substituters = https://c\n"
    "build-max-jobs = 3\ndiff-hook =\nunknown-thing = 1\nextra-cores = 2\n")
put("nix_conf", "ok-include.conf", "include a.conf\n!include missing.conf\nkeep-outputs = yes\n")
put("nix_conf", "err-bad-value.conf", "keep-outputs = maybe\n")
put("nix_conf", "err-syntax.conf", "sandbox\n")
put("nix_conf", "err-include-loop.conf", "include loop.conf\n")
put("nix_conf", "err-include-bad.conf", "cores = 1\ninclude bad.conf\n")
put("nix_conf", "err-include-self.conf", "include self.conf\n")

# --- export ------------------------------------------------------------------------------
SD = "/nix/store/"
hello = SD + "0g1savw1cf7pji42hasyx0smc4aw15nw-hello"
tree = SD + "1b9p07z77phvv2hz8ylpd4ikgnxjmc9f-tree"
tree_nar = nar_dir([
    ("bin", node_of(nar_dir([("run", node_of(nar_file(b"#!/bin/sh\n", True)))]))),
    ("link", framed("(") + framed("type") + framed("symlink") + framed("target")
     + framed(hello) + framed(")")),
])
chain = {}
for n, h in [("a", "6z8xsz6gy1dkgh5z5y0znvh601qbjhci"), ("b", "w8jhnrpw6h8b8jqqhkxrd84k7wvfwn1z"),
             ("c", "spmgz2isv4yigxvc80iv9kzzx3srqrkb")]:
    chain[n] = (SD + f"{h}-chain-{n}.drv", vec("drv", "chain-3-deep", "drvs", f"{h}-chain-{n}.drv"))
put("export", "ok-empty.export", u64(0))
put("export", "ok-one-file.export", export([(hello, nar_file(b"hello\n"), [], "")]))
put("export", "ok-references.export", export([
    (hello, nar_file(b"hello\n"), [], ""),
    (tree, tree_nar, [hello, tree], chain["a"][0]),
]))
put("export", "ok-drv-chain.export", export([
    (chain["a"][0], nar_file(chain["a"][1]), [], ""),
    (chain["b"][0], nar_file(chain["b"][1]), [chain["a"][0]], ""),
    (chain["c"][0], nar_file(chain["c"][1]), [chain["b"][0]], ""),
]))
# A 1.5 MiB file: the target inserts the zeros (see fuzz_targets/export.rs).
big = 3 << 19
big_nar = nar_file(b"")
size_at = len(big_nar) - len(framed(")")) - 8
big_nar = big_nar[:size_at] + u64(big) + big_nar[size_at + 8:]
body = export([(hello, big_nar, [], "")])
at = 8 + size_at + 8
put("export", "ok-big-file.export", b"\xffBIG" + struct.pack("<II", at, big) + body)
put("export", "err-dangling-reference.export", export([(tree, tree_nar, [hello], "")]))
put("export", "err-truncated.export", export([(hello, nar_file(b"hello\n"), [], "")])[:-12])
put("export", "err-bad-drv.export", export([(chain["a"][0], nar_file(b"Derive(["), [], "")]))
put("export", "err-wrong-drv-output.export", export([
    (chain["a"][0], nar_file(chain["a"][1].replace(b"fdbnjwch", b"fdbnjwci")), [], "")]))


# --- dictionaries (libFuzzer -dict=fuzz/dicts/TARGET.dict) -------------------------------
def dict_entry(b):
    if isinstance(b, str):
        b = b.encode()
    return '"' + "".join(chr(c) if 0x20 <= c < 0x7F and c not in b'"\\' else f"\\x{c:02x}"
                         for c in b) + '"'


def write_dict(target, entries):
    d = os.path.join(HERE, "dicts")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{target}.dict"), "w") as f:
        f.write(f"# libFuzzer dictionary for the '{target}' target (written by make_seeds.py)\n")
        for e in entries:
            f.write(dict_entry(e) + "\n")


NAR_TOKENS = ["nix-archive-1", "(", ")", "type", "regular", "directory", "symlink",
              "executable", "", "contents", "target", "entry", "name", "node", ".", ".."]
write_dict("nar", [framed(t) for t in NAR_TOKENS] + [u64(n) for n in (0, 8, 4096, 2**64 - 1)])
write_dict("aterm", ["Derive(", "[", "]", "(", ")", ",", '"', '""', '\\"', "\\n", "\\\\",
                     '"out"', '"r:sha256"', '"sha256"', '"impure"', '"x86_64-linux"',
                     '"/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t"',
                     '"/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t.drv"',
                     '"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"'])
write_dict("narinfo", [k + ": " for k in ["StorePath", "URL", "Compression", "FileHash",
                                          "FileSize", "NarHash", "NarSize", "References",
                                          "Deriver", "System", "Sig", "CA"]]
           + ["\n", "/nix/store/", "0g1savw1cf7pji42hasyx0smc4aw15nw-", "sha256:", "sha512-",
              "fixed:r:", "text:", "unknown-deriver", "StoreDir: ", "WantMassQuery: ",
              "Priority: "])
write_dict("nix_conf", ["include ", "!include ", "a.conf", "bad.conf", "loop.conf", "self.conf",
                        " = ", "#", "\n", "extra-", "sandbox", "relaxed", "max-jobs", "auto",
                        "cores", "substituters", "build-max-jobs", "keep-outputs", "true", "no",
                        "gc-reserved-space", "diff-hook", "18446744073709551616", "-1"])
write_dict("export", [u64(1), u64(0), u64(0x4558494E)] + [framed(t) for t in NAR_TOKENS]
           + [framed("/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-hello"),
              framed("/nix/store/1b9p07z77phvv2hz8ylpd4ikgnxjmc9f-x.drv"), b"\xffBIG"])
