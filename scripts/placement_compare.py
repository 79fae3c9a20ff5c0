#!/usr/bin/env python3
"""Moved fraction and balance of the three strategies, measured with `ferry plan --json`.

usage: placement_compare.py [FERRY_BINARY]   (default target/release/ferry)
"""
import json
import os
import subprocess
import sys
import tempfile

ferry = sys.argv[1] if len(sys.argv) > 1 else "target/release/ferry"


def topo(n, gen, drain=None):
    sets = [{"id": f"set{i:03}", "state": "draining" if i == drain else "active", "weight": 1.0,
             "disks": [{"id": f"s{i}d{j}", "path": f"/x/{i}/{j}"} for j in range(2)]} for i in range(n)]
    return {"generation": gen, "pools": [{"id": "p", "sets": sets}]}


def plan(a, b, strategy):
    with tempfile.TemporaryDirectory() as d:
        pa, pb = os.path.join(d, "a.json"), os.path.join(d, "b.json")
        json.dump(a, open(pa, "w"))
        json.dump(b, open(pb, "w"))
        out = subprocess.run([ferry, "plan", "--from", pa, "--to", pb, "--strategy", strategy, "--json"],
                             check=True, capture_output=True).stdout
        return json.loads(out)


print("| change | strategy | moved % | ideal % | moved/ideal | hottest/fair after |")
print("|---|---|---|---|---|---|")
for label, a, b in [("4 -> 5 sets", topo(4, 1), topo(5, 2)),
                    ("16 -> 17 sets", topo(16, 1), topo(17, 2)),
                    ("64 -> 65 sets", topo(64, 1), topo(65, 2)),
                    ("16, drain set 5", topo(16, 1), topo(16, 2, drain=5))]:
    for s in ["rendezvous", "ring", "jump"]:
        r = plan(a, b, s)
        print(f"| {label} | {s} | {r['moved_fraction']*100:.2f} | {r['ideal_fraction']*100:.2f} | "
              f"{r['moved_vs_ideal']:.3f} | {r['hottest_vs_fair_after']:.3f} |")
