#!/usr/bin/env bash
# One timed copy onto a fresh ext4 (like bench.sh -f), for A/B experiments between builds:
# prints wall time through a final sync, user/sys CPU, peak RSS, and the disk's request counts
# and average sizes (from /proc/diskstats; the device under the destination, and the source's
# when it differs), and on XFS the log forces and log writes of the run (/proc/fs/xfs/stat).
# FS=xfs makes a fresh XFS instead; FS=root copies into a directory on the root filesystem
# ($WORK/root-run, removed first), as a user copying in place would. With -p, also samples every thread of the command
# every 50 ms and prints one line per thread: its state and CPU ticks (10 ms) per sample, which
# shows who waits for whom (e.g. reactors sleeping while the committer runs).
#
# usage: [FS=ext4|xfs|root] scripts/fresh-run.sh [-p] SHAPE cold|warm CMD [ARGS...]   (SRC and DST are appended)
#   SHAPE: a dataset under $WORK/data (WORK defaults to /work/ferry-bench; see bench.sh).
#   e.g.   scripts/fresh-run.sh -p flat warm target/release/ferry copy -q
set -euo pipefail
sample=0
if [ "${1:-}" = -p ]; then sample=1; shift; fi
[ $# -ge 3 ] || { sed -n '13,14p' "$0" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "fresh-run.sh needs root (mkfs, losetup, drop_caches)" >&2; exit 2; }
shape=$1; cache=$2; shift 2
work=${WORK:-/work/ferry-bench}; data=$work/data; img=$work/fresh.img; mnt=$work/fresh-run
[ -d "$data/$shape" ] || { echo "no dataset $data/$shape (scripts/bench.sh makes them)" >&2; exit 2; }
. "$(dirname "$0")/fresh-fs.sh"
trap fresh_fs_off EXIT
fs=${FS:-ext4}
case $fs in
  ext4|ext4nj|xfs) fresh_fs_on "$img" "$mnt" "$data/$shape" "$fs"; dst=$mnt/out ;;
  root) dst=$work/root-run/out; rm -rf "$dst"; mkdir -p "$work/root-run" ;;
  *) echo "FS must be ext4, xfs or root" >&2; exit 2 ;;
esac
sync
case $cache in
  cold) echo 3 > /proc/sys/vm/drop_caches ;;
  warm) find "$data/$shape" -type f -exec cat {} + > /dev/null ;;
  *) echo "cache must be cold or warm" >&2; exit 2 ;;
esac
disk=$(df --output=source "$data" | tail -1); disk=${disk#/dev/}
stats() { awk -v d="$disk" '$3==d {print $4, $6, $8, $10, $19, $20}' /proc/diskstats; }
# XFS log: forces (log force calls) and log writes (iclog writes), all XFS mounts.
xfslog() { awk '$1=="log" {print $5, $2}' /proc/fs/xfs/stat 2>/dev/null || echo "0 0"; }
x0=$(xfslog)
samples=$(mktemp)
d0=$(stats); t0=$(date +%s.%N)
/usr/bin/time -f "%U %S %M" -o "$samples.time" "$@" "$data/$shape" "$dst" &
pid=$!
if [ "$sample" = 1 ]; then
  # /usr/bin/time's child is the command: sample its threads.
  sleep 0.02; cpid=$(pgrep -P $pid | head -1 || true)
  while [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null; do
    for s in /proc/"$cpid"/task/*/stat; do
      { read -r line < "$s"; } 2>/dev/null || continue # a thread may end meanwhile
      echo "$line" | awk '{print $1, $2, $3, $14 + $15}'
    done >> "$samples"
    echo "--" >> "$samples"
    sleep 0.05
  done
fi
wait $pid
sync
t1=$(date +%s.%N); d1=$(stats)
read -r r0 rs0 w0 ws0 fl0 fm0 <<< "$d0"; read -r r1 rs1 w1 ws1 fl1 fm1 <<< "$d1"
read -r user sys rss < "$samples.time"
nr=$((r1 - r0)); nw=$((w1 - w0))
printf "%s %s %s: wall %.2f s, user %s s, sys %s s, peak RSS %d MB, %d reads (avg %d KB), %d writes (avg %d KB), %d flushes (%d ms)\n" \
  "$*" "$shape" "$cache" "$(echo "$t1 - $t0" | bc)" "$user" "$sys" $((rss / 1024)) \
  $nr $(( (rs1 - rs0) / 2 / (nr > 0 ? nr : 1) )) $nw $(( (ws1 - ws0) / 2 / (nw > 0 ? nw : 1) )) $((fl1 - fl0)) $((fm1 - fm0))
if [ "$fs" = xfs ]; then
  read -r f0 l0 <<< "$x0"; read -r f1 l1 <<< "$(xfslog)"
  echo "xfs: $((f1 - f0)) log forces, $((l1 - l0)) log writes"
fi
if [ "$sample" = 1 ]; then
  # One line per thread (seen in 3 samples or more; short-lived helpers are left out): its
  # state and the CPU ticks it used since the previous sample.
  awk '$1 == "--" {next} {
      if (!($1 in seen)) { seen[$1] = 0; name[$1] = $2; order[++n] = $1 }
      seen[$1]++
      if ($1 in last) line[$1] = line[$1] sprintf(" %s%d", $3, $4 - last[$1])
      last[$1] = $4
    } END { for (i = 1; i <= n; i++) { t = order[i]; if (seen[t] >= 3)
      printf "%-16s%s  (total %d ticks)\n", name[t], line[t], last[t] } }' "$samples"
fi
rm -f "$samples" "$samples.time"
