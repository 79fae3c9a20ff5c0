#!/usr/bin/env bash
# Same-run benchmark of ferry against the peers that are installed (cp -a always; rsync, fcp,
# xcp, cpz when on PATH or in $PEERS/bin), on every destination asked for. Each run: a new
# destination (a freshly made filesystem, or the old copy removed), sync, drop caches (cold) or
# read the source once (warm), time the copy through a final `sync`. Tools alternate order run
# by run. Prints a markdown table per run (median (min-max) seconds per tool, each tool's time as
# a ratio to ferry's, peak RSS (/usr/bin/time) and CPU seconds (user+sys) per GB copied), then a
# compact summary: one line per shape, cache and destination with ferry's median, the fastest
# peer's and their ratio (peer / ferry: above 1 is ferry faster), and the load average before
# and after. With the large shape cold and fio installed, also the ceiling: fio with 2 readers
# and 2 writers at once (O_DIRECT, io_uring, 4 MiB blocks; writers overwriting laid-out files,
# and writing new ones), and ferry's large-cold throughput as a percentage of each.
#
# usage: [FERRY=BIN] [FERRY_B=BIN] [FERRY_ARGS=...] [PEERS=DIR] scripts/bench.sh
#            [-s "large mixed small"] [-r RUNS] [-c "cold warm"] [-d WORKDIR]
#            [-D "ext4 ext4nj xfs root tmpfs disk"] [-t|-f] [-o FILE] [-w]
#   -D  destinations, each run of each tool in each (root for ext4, xfs, tmpfs and cold):
#       ext4   a fresh ext4 (default mkfs, with journal) on a loop device over a file in WORKDIR,
#              made anew before every run. Why: on an ext4 without a journal (this VM's root
#              fs) the inode allocator skips every inode freed in the last
#              dirty_expire_interval*2 "seconds" (centiseconds taken as seconds: 100 minutes)
#              while its inode-table block is cached, rescanning them for every create
#              (find_inode_bit -> recently_deleted was 30 % of a small-file copy's CPU in perf),
#              so each run pays for the previous run's `rm -rf`.
#       ext4nj the same with a fresh ext4 without a journal (the root fs's kind, without its
#              history of deleted inodes)
#       xfs    the same with a fresh XFS (default mkfs.xfs; apt-get install xfsprogs)
#       root   a directory on the machine's own root filesystem, as a user copying in place
#              would ($ROOT_DST, default /var/tmp/ferry-bench-root; removed between runs, so
#              every tool pays for the previous run's removal, alternately)
#       tmpfs  data and destination on a tmpfs under WORKDIR (warm only: no cold cache)
#       disk   a directory beside the data in WORKDIR (the default; removed between runs)
#   -f  = -D ext4;  -t = -D tmpfs (the older spellings)
#   -w  one run of the first tool before each shape/destination/cache's runs, not counted (the
#       first run into memory not used since boot pays for the VM's first touch of it)
#   -o  also append the raw results (shape cache dest tool seconds rss_kb cpu_s_per_gb) to FILE
#   TOOLS="fcp xcp cpz": only these peers (of those installed; ferry always runs).
#   FERRY_B: a second ferry binary, benchmarked as the tool "ferry-b" in the same runs (paired
#   A/B of two builds); FERRY_ARGS: extra options for both (e.g. "--commit fdatasync").
# The lead's command for the whole table (non-interactive, ~1.5 h on 2 cores):
#   PEERS=/work/peers scripts/bench.sh -s "small mixed" -r 3 -c "cold warm" -D "ext4 xfs root tmpfs"
set -euo pipefail
shapes="large mixed small"; runs=3; caches="cold warm"; work=/work/ferry-bench; dests=disk; raw=""
warmup=0
while getopts "s:r:c:d:D:tfo:w" o; do
  case $o in s) shapes=$OPTARG;; r) runs=$OPTARG;; c) caches=$OPTARG;; d) work=$OPTARG;;
    D) dests=$OPTARG;; t) dests=tmpfs;; f) dests=ext4;; o) raw=$OPTARG;; w) warmup=1;;
    *) echo "bad option" >&2; exit 2;; esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
# FERRY=/path/to/ferry benchmarks that binary (e.g. a copy, so the tree can be rebuilt meanwhile).
if [ -n "${FERRY:-}" ]; then ferry=$FERRY; else
  (cd "$here" && cargo build --release -q)
  ferry="$here/target/release/ferry"
fi
ferry_b=${FERRY_B:-}; ferry_args=${FERRY_ARGS:-}
export PATH="${PEERS:-/opt/ferry-peers}/bin:$PATH"
root_dst=${ROOT_DST:-/var/tmp/ferry-bench-root}
for d in $dests; do
  case $d in
    ext4|ext4nj|xfs)
      [ "$(id -u)" = 0 ] && command -v losetup >/dev/null && command -v "mkfs.${d%nj}" >/dev/null ||
        { echo "bench.sh -D $d needs root, losetup and mkfs.${d%nj}" >&2; exit 2; } ;;
    tmpfs) [ "$(id -u)" = 0 ] || { echo "bench.sh -D tmpfs needs root (mount)" >&2; exit 2; } ;;
    root)
      mkdir -p "$root_dst"
      [ "$(stat -c %d "$root_dst")" = "$(stat -c %d /)" ] ||
        { echo "ROOT_DST=$root_dst is not on the root filesystem" >&2; exit 2; } ;;
    disk) ;;
    *) echo "unknown destination $d (ext4 ext4nj xfs root tmpfs disk)" >&2; exit 2 ;;
  esac
done
if [[ " $caches " == *" cold "* ]] && [ "$(id -u)" != 0 ]; then
  echo "cold runs need root (drop_caches)" >&2; exit 2
fi
mkdir -p "$work"
data="$work/data"; mkdir -p "$data"
img="$work/fresh.img"; mnt="$work/fresh"; tmnt="$work/tmpfs"
. "$here/scripts/fresh-fs.sh"
thp=/sys/kernel/mm/transparent_hugepage/enabled; thp_was=""
tmpfs_mounted=0
cleanup() {
  if [ -n "$thp_was" ]; then echo "$thp_was" > "$thp"; fi
  fresh_fs_off
  if [ "$tmpfs_mounted" = 1 ]; then umount "$tmnt" || true; fi
}
trap cleanup EXIT
tmpfs_on() {
  mkdir -p "$tmnt"
  if ! mountpoint -q "$tmnt"; then mount -t tmpfs -o size=12g tmpfs "$tmnt"; tmpfs_mounted=1; fi
}

tools=(ferry)
if [ -n "$ferry_b" ]; then tools+=(ferry-b); fi
tools+=(cp)
command -v rsync >/dev/null && tools+=(rsync)
for p in fcp xcp cpz; do command -v $p >/dev/null && tools+=($p); done
if [ -n "${TOOLS:-}" ]; then # only these of the tools found (ferry, and ferry-b when set, always)
  keep=(ferry); [ -n "$ferry_b" ] && keep+=(ferry-b)
  for t in "${tools[@]}"; do [[ " $TOOLS " == *" $t "* && $t != ferry* ]] && keep+=("$t"); done
  tools=("${keep[@]}")
fi

run_tool() { # tool src dst
  case $1 in
    ferry) "$ferry" copy -q $ferry_args "$2" "$3" ;;
    ferry-b) "$ferry_b" copy -q $ferry_args "$2" "$3" ;;
    cp) cp -a "$2" "$3" ;;
    rsync) rsync -a "$2/" "$3/" ;;
    fcp) fcp "$2" "$3" ;;
    xcp) xcp -r "$2" "$3" >/dev/null ;;
    cpz) cpz "$2" "$3" ;;
  esac
}
# Where a run of SHAPE to DEST reads from and writes to: sets src and out (a new, empty place).
place() { # dest shape
  src="$data/$2"
  case $1 in
    ext4|ext4nj|xfs) fresh_fs_on "$img" "$mnt" "$data/$2" "$1"; out="$mnt/out" ;;
    root) out="$root_dst/out"; rm -rf "$out" ;;
    disk) out="$work/out"; rm -rf "$out" ;;
    tmpfs)
      tmpfs_on
      if [ ! -e "$tmnt/data/.$2.complete" ]; then
        rm -rf "$tmnt/data/$2"; mkdir -p "$tmnt/data"; cp -a "$data/$2" "$tmnt/data/$2"
        touch "$tmnt/data/.$2.complete"
      fi
      src="$tmnt/data/$2"; out="$tmnt/out"; rm -rf "$out" ;;
  esac
}
unplace() { # dest
  case $1 in
    ext4|ext4nj|xfs) fresh_fs_off ;;
    *) rm -rf "$out" ;;
  esac
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# One timed run: shape cache dest tool, its line appended to FILE (and printed).
one_run() {
  local shape=$1 cache=$2 dest=$3 tool=$4 to=$5 t0 t1 rss usr sys
  place "$dest" "$shape"
  sync
  if [ "$cache" = cold ]; then echo 3 > /proc/sys/vm/drop_caches; fi
  if [ "$cache" = warm ]; then tar cf - "$src" 2>/dev/null | cat >/dev/null; fi
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M %U %S" -o "$meas" bash -c "$(declare -f run_tool); ferry=$ferry; ferry_b='$ferry_b'; ferry_args='$ferry_args'; run_tool $tool '$src' '$out'"
  sync
  t1=$(date +%s.%N)
  read -r rss usr sys < <(tail -1 "$meas")
  local tag=""; [ "$to" = /dev/null ] && tag=" (warm-up, not counted)"
  echo "$shape $cache $dest $tool $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}") $rss $(awk "BEGIN{printf \"%.3f\", ($usr + $sys) / ($bytes / 1e9)}")$tag" | tee -a "$to" >&2
  unplace "$dest"
}

results=$(mktemp); meas=$(mktemp)
load0=$(loadavg)
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores, load $load0; destinations: $dests; tools: ${tools[*]}" >&2
for shape in $shapes; do
  "$here/scripts/gen_dataset.py" "$shape" "$data/$shape"
  bytes=$(du -sb "$data/$shape" | cut -f1)
  for dest in $dests; do
    for cache in $caches; do
      if [ "$dest" = tmpfs ] && [ "$cache" = cold ]; then continue; fi
      # -w: one run first, not counted: the first run into memory the machine has not used
      # since boot pays for the VM's first touch of it (BENCHMARKS, session 22)
      if [ "$warmup" = 1 ]; then one_run "$shape" "$cache" "$dest" "${tools[0]}" /dev/null; fi
      for ((r = 0; r < runs; r++)); do
        order=("${tools[@]}")
        if ((r % 2)); then order=($(printf '%s\n' "${tools[@]}" | tac)); fi
        for tool in "${order[@]}"; do
          one_run "$shape" "$cache" "$dest" "$tool" "$results"
        done
      done
    done
  done
done
ceiling=""; fresh_ceiling=""; cdest=${dests%% *}
if [[ " $shapes " == *" large "* && " $caches " == *" cold "* ]] && command -v fio >/dev/null &&
  [ "$cdest" != tmpfs ]; then
  # The disk's copy ceiling: 2 readers of the large files and 2 writers, all at once, the
  # writers on the first destination (a fresh filesystem too, like the copies). Measured
  # twice: writers overwriting files laid out beforehand (the disk's ceiling: no block
  # allocation; this is the one the target is judged by), and writers of new files (fio's
  # default: fallocate, then O_DIRECT writes that convert unwritten extents, the cost every
  # O_DIRECT copier pays).
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
      place "$cdest" large
      c=$(fio_ceiling $kind)
      if [ $kind = laid ]; then laid+=("$c"); else new+=("$c"); fi
      unplace "$cdest"
    done
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  ceiling=$(median "${laid[@]}"); fresh_ceiling=$(median "${new[@]}")
  echo "fio runs, laid out: ${laid[*]}; new files: ${new[*]}" >&2
  if [ -n "$thp_was" ]; then echo "$thp_was" > "$thp"; thp_was=""; fi
  echo "fio ceiling (2 readers + 2 writers, O_DIRECT io_uring 4M), median: $ceiling GB/s copied; into new files: $fresh_ceiling GB/s" >&2
fi
if [ -n "$raw" ]; then cat "$results" >> "$raw"; fi
python3 - "$results" "$ceiling" "$data" "$fresh_ceiling" "$load0" "$(loadavg)" <<'PY'
import sys, statistics, collections, os
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    s, c, d, t, v, rss, cpu = line.split()
    rows[(s, c, d, t)].append((float(v), int(rss), float(cpu)))
ceiling = sys.argv[2]
med = lambda k: statistics.median(x[0] for x in rows[k])
print("| shape | cache | fs | tool | median s | min-max s | tool / ferry | peak RSS MB | CPU s/GB |")
print("|---|---|---|---|---|---|---|---|---|")
for (s, c, d, t), v in rows.items():
    f = med((s, c, d, "ferry"))
    m = med((s, c, d, t))
    rss = max(x[1] for x in v) / 1024
    cpu = statistics.median(x[2] for x in v)
    print(f"| {s} | {c} | {d} | {t} | {m:.2f} | {min(x[0] for x in v):.2f}-{max(x[0] for x in v):.2f} | {m / f:.2f} | {rss:.0f} | {cpu:.2f} |")
if ceiling and ("large", "cold") in {(k[0], k[1]) for k in rows}:
    k = next(k for k in rows if k[:2] == ("large", "cold") and k[3] == "ferry")
    size = sum(os.path.getsize(os.path.join(sys.argv[3], "large", n)) for n in os.listdir(os.path.join(sys.argv[3], "large")))
    gbs = size / med(k) / 1e9
    print(f"\nfio ceiling {ceiling} GB/s (writers overwrite laid-out files); ferry large cold ({k[2]}) {gbs:.3f} GB/s = {100 * gbs / float(ceiling):.0f}% of it")
    print(f"fio into new files {sys.argv[4]} GB/s; ferry = {100 * gbs / float(sys.argv[4]):.0f}% of it")
# The compact summary: the fastest peer (not ferry, not ferry-b) against ferry, per case.
print(f"\nsummary (load average before {sys.argv[5]}, after {sys.argv[6]}; ratio = fastest peer's median / ferry's, > 1: ferry faster)")
cases = sorted({k[:3] for k in rows}, key=lambda k: (k[0], k[2], k[1]))
for s, c, d in cases:
    f = med((s, c, d, "ferry"))
    peers = [(med(k), k[3]) for k in rows if k[:3] == (s, c, d) and not k[3].startswith("ferry")]
    line = f"{s:6} {c:4} {d:5}  ferry {f:6.2f} s"
    if (s, c, d, "ferry-b") in rows:
        b = med((s, c, d, "ferry-b"))
        line += f"  ferry-b {b:6.2f} s (b/a {b / f:.2f})"
    if peers:
        p, name = min(peers)
        line += f"  fastest peer {name} {p:6.2f} s  ratio {p / f:.2f}"
    print(line)
PY
rm -f "$results" "$meas"
