#!/usr/bin/env python3
"""Write a `nix-store --export` stream of N small text paths forming a DAG (each path refers to
its predecessor and to the path at half its index), so that the last path's closure holds
all N. Used by bench/store.sh; the stream format is Nix's (see crates/ferrix-store/src/export.rs).

usage: gen-export.py STORE_DIR N > stream   (prints the top path on stderr)
"""
import hashlib
import struct
import sys

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


def nix32(b: bytes) -> str:
    n = (len(b) * 8 - 1) // 5 + 1
    out = []
    for i in range(n - 1, -1, -1):
        bit = i * 5
        j, k = divmod(bit, 8)
        v = b[j] >> k
        if j + 1 < len(b):
            v |= b[j + 1] << (8 - k)
        out.append(ALPHABET[v & 0x1F])
    return "".join(out)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def string(s: bytes) -> bytes:
    return u64(len(s)) + s + b"\0" * ((8 - len(s) % 8) % 8)


def nar(contents: bytes) -> bytes:
    return b"".join(
        string(t) for t in [b"nix-archive-1", b"(", b"type", b"regular", b"contents", contents, b")"]
    )


def main() -> None:
    store_dir, n = sys.argv[1], int(sys.argv[2])
    paths = []
    out = sys.stdout.buffer
    for i in range(n):
        h = hashlib.sha256(f"ferrix-bench-{i}".encode()).digest()[:20]
        path = f"{store_dir}/{nix32(h)}-p{i}"
        refs = sorted({paths[i - 1], paths[i // 2]}) if i > 0 else []
        body = f"path {i}\n" + "".join(r + "\n" for r in refs)
        out.write(u64(1))
        out.write(nar(body.encode()))
        out.write(u64(0x4558494E))
        out.write(string(path.encode()))
        out.write(u64(len(refs)))
        for r in refs:
            out.write(string(r.encode()))
        out.write(string(b""))
        out.write(u64(0))
        paths.append(path)
    out.write(u64(0))
    sys.stderr.write(paths[-1] + "\n")


if __name__ == "__main__":
    main()
