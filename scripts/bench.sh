#!/usr/bin/env bash
# Same-run benchmark of ferry against the peers that are installed (cp -a always; rsync, fcp,
# xcp, cpz when on PATH or in $PEERS/bin). Each run: remove the destination, sync, drop caches
# (cold), time the copy through a final `sync`. Tools alternate order run by run. Prints a
# markdown table: median (min-max) seconds per tool and each peer's time as a ratio to ferry's.
#
# usage: scripts/bench.sh [-s "large mixed small"] [-r RUNS] [-c "cold warm"] [-d WORKDIR] [-t]
#   -t  put data and destination on a tmpfs under WORKDIR (warm only: tmpfs has no cold cache)
set -euo pipefail
shapes="large mixed small"; runs=3; caches="cold warm"; work=/work/ferry-bench; tmpfs=0
while getopts "s:r:c:d:t" o; do
  case $o in s) shapes=$OPTARG;; r) runs=$OPTARG;; c) caches=$OPTARG;; d) work=$OPTARG;; t) tmpfs=1;;
    *) echo "bad option" >&2; exit 2;; esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
(cd "$here" && cargo build --release -q)
ferry="$here/target/release/ferry"
export PATH="${PEERS:-/opt/ferry-peers}/bin:$PATH"
mkdir -p "$work"
if [ "$tmpfs" = 1 ]; then
  caches=warm
  mkdir -p "$work/tmpfs"
  mountpoint -q "$work/tmpfs" || mount -t tmpfs -o size=12g tmpfs "$work/tmpfs"
  base="$work/tmpfs"; where=tmpfs
else
  base="$work"; where=disk
fi
data="$base/data"; out="$base/out"; mkdir -p "$data"

tools=(ferry cp)
command -v rsync >/dev/null && tools+=(rsync)
for p in fcp xcp cpz; do command -v $p >/dev/null && tools+=($p); done

run_tool() { # tool src dst
  case $1 in
    ferry) "$ferry" copy -q "$2" "$3" ;;
    cp) cp -a "$2" "$3" ;;
    rsync) rsync -a "$2/" "$3/" ;;
    fcp) fcp "$2" "$3" ;;
    xcp) xcp -r "$2" "$3" >/dev/null ;;
    cpz) cpz "$2" "$3" ;;
  esac
}

results=$(mktemp)
echo "# $(date -u +%F) $(uname -r) $(nproc) cores, $where; tools: ${tools[*]}" >&2
for shape in $shapes; do
  "$here/scripts/gen_dataset.py" "$shape" "$data/$shape"
  for cache in $caches; do
    for ((r = 0; r < runs; r++)); do
      order=("${tools[@]}")
      if ((r % 2)); then order=($(printf '%s\n' "${tools[@]}" | tac)); fi
      for tool in "${order[@]}"; do
        rm -rf "$out"; sync
        if [ "$cache" = cold ]; then echo 3 > /proc/sys/vm/drop_caches; fi
        if [ "$cache" = warm ]; then tar cf - "$data/$shape" 2>/dev/null | cat >/dev/null; fi
        t0=$(date +%s.%N)
        run_tool "$tool" "$data/$shape" "$out"
        sync
        t1=$(date +%s.%N)
        echo "$shape $cache $tool $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}")" | tee -a "$results" >&2
      done
    done
  done
done
rm -rf "$out"
python3 - "$results" "$where" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    s, c, t, v = line.split(); rows[(s, c, t)].append(float(v))
where = sys.argv[2]
print(f"| shape | cache | fs | tool | median s | min-max s | tool / ferry |")
print("|---|---|---|---|---|---|---|")
for (s, c, t), v in rows.items():
    f = statistics.median(rows[(s, c, "ferry")])
    m = statistics.median(v)
    print(f"| {s} | {c} | {where} | {t} | {m:.2f} | {min(v):.2f}-{max(v):.2f} | {m / f:.2f} |")
PY
rm -f "$results"
