#!/usr/bin/env bash
# Same-run benchmark of ferry against the peers that are installed (cp -a always; rsync, fcp,
# xcp, cpz when on PATH or in $PEERS/bin). Each run: remove the destination, sync, drop caches
# (cold), time the copy through a final `sync`. Tools alternate order run by run. Prints a
# markdown table: median (min-max) seconds per tool and each peer's time as a ratio to ferry's,
# peak RSS (/usr/bin/time) and CPU seconds (user+sys) per GB copied. With the large shape cold and
# fio installed, also the ceiling: fio with 2 readers and 2 writers at once (O_DIRECT, io_uring,
# 4 MiB blocks; writers overwriting laid-out files, and writing new ones), and ferry's large-cold
# throughput as a percentage of each.
#
# usage: [FERRY=BIN] [PEERS=DIR] scripts/bench.sh [-s "large mixed small"] [-r RUNS] [-c "cold warm"] [-d WORKDIR] [-t|-f]
#   -t  put data and destination on a tmpfs under WORKDIR (warm only: tmpfs has no cold cache)
#   -f  destination on a fresh ext4 (default mkfs, with journal) on a loop device over a file in
#       WORKDIR, made anew before every run (root). Why: on an ext4 without a journal (this VM's
#       root fs) the inode allocator skips every inode freed in the last dirty_expire_interval*2
#       "seconds" (centiseconds taken as seconds: 100 minutes) while its inode-table block is
#       cached, rescanning them for every create (find_inode_bit -> recently_deleted was 30 % of
#       a small-file copy's CPU in perf), so each run pays for the previous run's `rm -rf`.
set -euo pipefail
shapes="large mixed small"; runs=3; caches="cold warm"; work=/work/ferry-bench; tmpfs=0; fresh=0
while getopts "s:r:c:d:tf" o; do
  case $o in s) shapes=$OPTARG;; r) runs=$OPTARG;; c) caches=$OPTARG;; d) work=$OPTARG;; t) tmpfs=1;;
    f) fresh=1;;
    *) echo "bad option" >&2; exit 2;; esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
# FERRY=/path/to/ferry benchmarks that binary (e.g. a copy, so the tree can be rebuilt meanwhile).
if [ -n "${FERRY:-}" ]; then ferry=$FERRY; else
  (cd "$here" && cargo build --release -q)
  ferry="$here/target/release/ferry"
fi
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
img="$work/fresh.img"; mnt="$work/fresh"
. "$here/scripts/fresh-fs.sh"
fresh_off() { fresh_fs_off; }
fresh_on() { # shape: a new ext4 big enough for two copies of the shape, mounted at $mnt
  fresh_fs_on "$img" "$mnt" "$data/$1"
  out="$mnt/out"
}
if [ "$fresh" = 1 ]; then
  [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null ||
    { echo "bench.sh -f needs root, mkfs.ext4 and losetup" >&2; exit 2; }
  where="disk, fresh ext4 dst"
fi
thp=/sys/kernel/mm/transparent_hugepage/enabled; thp_was=""
cleanup() {
  if [ -n "$thp_was" ]; then echo "$thp_was" > "$thp"; fi
  if [ "$fresh" = 1 ]; then fresh_off; fi
}
trap cleanup EXIT

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

results=$(mktemp); meas=$(mktemp)
echo "# $(date -u +%F) $(uname -r) $(nproc) cores, $where; tools: ${tools[*]}" >&2
for shape in $shapes; do
  "$here/scripts/gen_dataset.py" "$shape" "$data/$shape"
  for cache in $caches; do
    for ((r = 0; r < runs; r++)); do
      order=("${tools[@]}")
      if ((r % 2)); then order=($(printf '%s\n' "${tools[@]}" | tac)); fi
      for tool in "${order[@]}"; do
        if [ "$fresh" = 1 ]; then fresh_on "$shape"; else rm -rf "$out"; fi
        sync
        if [ "$cache" = cold ]; then echo 3 > /proc/sys/vm/drop_caches; fi
        if [ "$cache" = warm ]; then tar cf - "$data/$shape" 2>/dev/null | cat >/dev/null; fi
        t0=$(date +%s.%N)
        /usr/bin/time -f "%M %U %S" -o "$meas" bash -c "$(declare -f run_tool); ferry=$ferry; run_tool $tool '$data/$shape' '$out'"
        sync
        t1=$(date +%s.%N)
        bytes=$(du -sb "$data/$shape" | cut -f1)
        read -r rss usr sys < <(tail -1 "$meas")
        echo "$shape $cache $tool $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}") $rss $(awk "BEGIN{printf \"%.3f\", ($usr + $sys) / ($bytes / 1e9)}")" | tee -a "$results" >&2
      done
    done
  done
done
if [ "$fresh" = 1 ]; then fresh_off; out="$base/out"; else rm -rf "$out"; fi
ceiling=""; fresh_ceiling=""
if [[ " $shapes " == *" large "* && " $caches " == *" cold "* ]] && command -v fio >/dev/null; then
  # The disk's copy ceiling: 2 readers of the large files and 2 writers, all at once (with -f,
  # the writers go to a fresh filesystem too, like the copies). Measured twice: writers
  # overwriting files laid out beforehand (the disk's ceiling: no block allocation; this is the
  # one the target is judged by), and writers of new files (fio's default: fallocate, then
  # O_DIRECT writes that convert unwritten extents, the cost every O_DIRECT copier pays).
  fio_ceiling() {
    mkdir -p "$out"
    if [ "$1" = laid ]; then
      for w in w0 w1; do dd if=/dev/zero of="$out/$w" bs=4M count=256 oflag=direct status=none; done
    fi
    sync; echo 3 > /proc/sys/vm/drop_caches
    fio --output-format=json --ioengine=io_uring --direct=1 --bs=4M --iodepth=8 \
      --name=r0 --rw=read --filename="$data/large/large0.bin" \
      --name=r1 --rw=read --filename="$data/large/large1.bin" \
      --name=w0 --rw=write --size=1G --filename="$out/w0" \
      --name=w1 --rw=write --size=1G --filename="$out/w1" > "$meas"
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"]
secs = max(x["job_runtime"] for x in j) / 1000
rd = sum(x["read"]["io_bytes"] for x in j)
print(f"{rd / secs / 1e9:.3f}")' "$meas"
  }
  # fio's buffers are ordinary pages: a 4 MiB O_DIRECT request from them has 1024 segments and
  # is split at the device's segment limit (virtio-blk: 254), ferry's buffers are huge pages.
  # For a fair ceiling fio gets transparent huge pages too, for its run only (measured here:
  # 0.755 GB/s without, 1.53-1.57 with, laid-out files).
  if [ -w "$thp" ]; then
    thp_was=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "$thp")
    echo always > "$thp"
  fi
  # The disk's speed swings from run to run (1.15-1.57 GB/s laid out, minutes apart): the
  # median of $runs runs of each kind, alternating.
  laid=(); new=()
  for ((i = 0; i < runs; i++)); do
    for kind in laid new; do
      if [ "$fresh" = 1 ]; then fresh_on large; fi
      c=$(fio_ceiling $kind)
      if [ $kind = laid ]; then laid+=("$c"); else new+=("$c"); fi
      if [ "$fresh" = 1 ]; then fresh_off; out="$base/out"; else rm -rf "$out"; fi
    done
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  ceiling=$(median "${laid[@]}"); fresh_ceiling=$(median "${new[@]}")
  echo "fio runs, laid out: ${laid[*]}; new files: ${new[*]}" >&2
  if [ -n "$thp_was" ]; then echo "$thp_was" > "$thp"; thp_was=""; fi
  echo "fio ceiling (2 readers + 2 writers, O_DIRECT io_uring 4M), median: $ceiling GB/s copied; into new files: $fresh_ceiling GB/s" >&2
fi
python3 - "$results" "$where" "$ceiling" "$data" "$fresh_ceiling" <<'PY'
import sys, statistics, collections, os
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    s, c, t, v, rss, cpu = line.split()
    rows[(s, c, t)].append((float(v), int(rss), float(cpu)))
where, ceiling = sys.argv[2], sys.argv[3]
print("| shape | cache | fs | tool | median s | min-max s | tool / ferry | peak RSS MB | CPU s/GB |")
print("|---|---|---|---|---|---|---|---|---|")
for (s, c, t), v in rows.items():
    f = statistics.median(x[0] for x in rows[(s, c, "ferry")])
    m = statistics.median(x[0] for x in v)
    rss = max(x[1] for x in v) / 1024
    cpu = statistics.median(x[2] for x in v)
    print(f"| {s} | {c} | {where} | {t} | {m:.2f} | {min(x[0] for x in v):.2f}-{max(x[0] for x in v):.2f} | {m / f:.2f} | {rss:.0f} | {cpu:.2f} |")
if ceiling and ("large", "cold", "ferry") in rows:
    size = sum(os.path.getsize(os.path.join(sys.argv[4], "large", n)) for n in os.listdir(os.path.join(sys.argv[4], "large")))
    m = statistics.median(x[0] for x in rows[("large", "cold", "ferry")])
    gbs = size / m / 1e9
    print(f"\nfio ceiling {ceiling} GB/s (writers overwrite laid-out files); ferry large cold {gbs:.3f} GB/s = {100 * gbs / float(ceiling):.0f}% of it")
    print(f"fio into new files {sys.argv[5]} GB/s; ferry = {100 * gbs / float(sys.argv[5]):.0f}% of it")
PY
rm -f "$results" "$meas"
