#!/usr/bin/env python3
"""Deterministic benchmark datasets (seeded): large, mixed, small, flat, sparse.

usage: gen_dataset.py SHAPE DIR   (DIR is created; an existing complete DIR is kept as cached)
"""
import math
import os
import random
import sys


def write(path, n, rng):
    with open(path, "wb") as f:
        left = n
        while left:
            k = min(left, 8 << 20)
            f.write(rng.randbytes(k))
            left -= k


def large(d, rng):
    for i in range(4):
        write(os.path.join(d, f"large{i}.bin"), 1 << 30, rng)


def mixed(d, rng):
    # 10,000 files, log-normal sizes with median ~60 KiB, capped at 64 MiB, in 17x101 dirs.
    dirs = [os.path.join(d, f"a{a:02}", f"b{b:03}") for a in range(17) for b in range(101)]
    for x in dirs:
        os.makedirs(x, exist_ok=True)
    for i in range(10_000):
        n = int(min(64 << 20, math.exp(rng.gauss(math.log(60 << 10), 1.6))))
        write(os.path.join(dirs[i % len(dirs)], f"f{i:05}"), n, rng)


def small(d, rng):
    for k in range(1000):
        x = os.path.join(d, f"d{k:04}")
        os.makedirs(x, exist_ok=True)
        for i in range(100):
            write(os.path.join(x, f"f{i:03}"), 4096, rng)


def flat(d, rng):
    for i in range(100_000):
        write(os.path.join(d, f"f{i:06}"), 4096, rng)


def sparse(d, rng):
    for i in range(4):
        with open(os.path.join(d, f"sparse{i}.img"), "wb") as f:
            f.truncate(4 << 30)
            for j in range(3):
                f.seek(j * (1 << 30) + rng.randrange(1 << 20))
                f.write(rng.randbytes(1 << 20))


SHAPES = {"large": large, "mixed": mixed, "small": small, "flat": flat, "sparse": sparse}

if __name__ == "__main__":
    shape, d = sys.argv[1], sys.argv[2]
    done = os.path.join(os.path.dirname(os.path.abspath(d)), f".{os.path.basename(d)}.complete")
    if os.path.exists(done):
        sys.exit(0)
    os.makedirs(d, exist_ok=True)
    SHAPES[shape](d, random.Random(20261122))
    os.sync()
    open(done, "w").close()
