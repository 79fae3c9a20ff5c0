#!/usr/bin/env python3
"""Independent implementation of placement v1 (from DESIGN.md, not from ferry's code), used to
produce the golden vectors pinned in tests/placement.rs. Needs `pip install xxhash`.

usage: placement_golden.py TOPOLOGY.json
prints: bucket key partition owner-sets(best first) primary-disk
"""
import json
import math
import struct
import sys

import xxhash


def h(b):
    return xxhash.xxh3_64_intdigest(b, seed=0)


def score(x, w):
    u = ((x >> 11) + 0.5) / float(1 << 53)
    return -w / math.log(u)


def rank(cands):  # cands: list of (score, id bytes)
    return sorted(cands, key=lambda c: (-c[0], c[1]))


topo = json.load(open(sys.argv[1]))
sets = [s for p in topo["pools"] for s in p["sets"] if s["state"] == "active"]
R = topo.get("replicas", 1)
KEYS = [("photos", "cat.jpg"), ("b", ""), ("bucket", "a/b/c.txt"), ("logs", "2026/11/22/x.log"),
        ("media", "vidéo/été.mp4"), ("x", "y" * 200), ("data", "0"), ("data", "1"),
        ("data", "2"), ("archive", "deep/er/than/you/think.tar"), ("z", "-leading-dash"),
        ("obj", "with space")]
for bucket, key in KEYS:
    p = h(bucket.encode() + b"/" + key.encode()) >> 48
    pl = struct.pack("<H", p)
    ranked = rank([(score(h(pl + s["id"].encode()), s["weight"]), s["id"].encode()) for s in sets])
    owners = [r[1].decode() for r in ranked[:R]]
    first = next(s for s in sets if s["id"] == owners[0])
    disks = rank([(score(h(pl + first["id"].encode() + b"/" + d["id"].encode()), 1.0), d["id"].encode())
                  for d in first["disks"]])
    print(json.dumps([bucket, key, p, owners, disks[0][1].decode()], ensure_ascii=False))
