#!/bin/bash
# Peak RSS of `ferry copy` over N 4 KiB files (1,000 per directory): memory must stay flat in N.
# usage: scripts/rss-copy.sh N [WORKDIR]   (WORKDIR default /dev/shm: tmpfs, so the disk is not
# what is measured; needs python3 and ~8 KiB of WORKDIR space per file)
set -euo pipefail
n=${1:?usage: rss-copy.sh N [WORKDIR]}
w=${2:-/dev/shm}/ferry-rss-copy-$n
ferry=$(cd "$(dirname "$0")/.." && pwd)/target/release/ferry
rm -rf "$w"; mkdir -p "$w"
python3 - "$n" "$w/src" <<'PY'
import os, sys
n, root = int(sys.argv[1]), sys.argv[2]
data = b"x" * 4096
for i in range(n):
    d = f"{root}/d{i // 1000:05}"
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i % 1000:05}", "wb") as f:
        f.write(data)
PY
/usr/bin/time -f "N=$n maxrss_kb=%M elapsed=%e" "$ferry" copy -q --state-dir "$w/state" "$w/src" "$w/dst"
rm -rf "$w"
