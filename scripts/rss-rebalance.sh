#!/bin/bash
# Peak RSS of a rebalance that moves N 1 KiB objects off one draining disk (memory must stay
# flat in N). usage: scripts/rss-rebalance.sh N [WORKDIR]   (needs python3; ~4 ms per object here)
set -e
N=$1; B=${2:-/tmp}/ferry-rss-$N; F=$(cd "$(dirname "$0")/.." && pwd)/target/release/ferry; rm -rf $B; mkdir -p $B/d0 $B/d1 $B/d2 $B/d3 $B/d4
python3 - $N $B <<'PY'
import os, sys, json
n=int(sys.argv[1]); b=sys.argv[2]
for i in range(n):
    d=f"{b}/d0/bkt/k{i%1000:03}"
    if i < 1000: os.makedirs(d, exist_ok=True)
    with open(f"{d}/o{i}", "wb") as f: f.write(b"x"*1024)
def t(g, states):
    return {"generation":g,"pools":[{"id":"p","sets":[{"id":f"s{i}","state":st,"weight":1.0,"disks":[{"id":f"d{i}","path":f"{b}/d{i}"}]} for i,st in states]}]}
json.dump(t(1,[(0,"active")]),open(f"{b}/g1.json","w"))
json.dump(t(2,[(0,"draining"),(1,"active"),(2,"active"),(3,"active"),(4,"active")]),open(f"{b}/g2.json","w"))
PY
sync
/usr/bin/time -f "N=$N maxrss_kb=%M elapsed=%e" "$F" rebalance --from $B/g1.json --to $B/g2.json --state-dir $B/state --verify stream 2>&1 | tail -3
rm -rf $B
