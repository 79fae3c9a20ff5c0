#!/usr/bin/env bash
# A copier-free reference for a cold copy of a shape: read every file of the shape cold (16
# parallel `cat`s, in directory order) while, at the same time, 2 streams write as many bytes
# (taken warm from the `large` shape's files) to a fresh ext4 like bench.sh -f's (FS=xfs: a fresh
# XFS, FS=ext4nj: an ext4 without a journal), then sync.
# Prints when each side finished. It is the disk's work of a copy without any copier's per-file
# work: on a disk whose reads and writes share one budget (a VM's virtual disk) a copy that
# lands near it is bound by the disk. Not a strict floor: a smarter reader (ferry dispatches a
# listing in inode order) can beat 16 cats on many small files.
#
# usage: [FS=ext4|ext4nj|xfs] scripts/disk-floor.sh SHAPE [read|write|both]   (default both; root)
set -euo pipefail
[ $# -ge 1 ] || { sed -n '11p' "$0" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "disk-floor.sh needs root (mkfs, losetup, drop_caches)" >&2; exit 2; }
shape=$1; mode=${2:-both}
case $mode in read|write|both) ;; *) echo "mode must be read, write or both" >&2; exit 2 ;; esac
work=${WORK:-/work/ferry-bench}; data=$work/data; img=$work/fresh.img; mnt=$work/disk-floor
for s in "$shape" large; do
  [ -d "$data/$s" ] || { echo "no dataset $data/$s (scripts/bench.sh makes them)" >&2; exit 2; }
done
. "$(dirname "$0")/fresh-fs.sh"
trap fresh_fs_off EXIT
bytes=$(du -sb "$data/$shape" | cut -f1)
per=$(( (bytes + 1) / 2 )) # bytes per writer: large0+large2, large1+large3 (up to 2 GiB each)
(( per <= 2147483648 )) || { echo "$shape is bigger than the large shape's 4 GiB" >&2; exit 2; }
gib=1073741824
# Writer k's bytes: large{k} then large{k+2}, by dd with 4 MiB blocks (one copy per byte; a
# `cat | head` pipeline was CPU-bound at 2 cores and measured the CPU, not the disk).
source_to() { # k destination
  local first=$(( per < gib ? per : gib ))
  dd if="$data/large/large$1.bin" of="$2" bs=4M count="$first" iflag=count_bytes status=none
  if (( per > gib )); then
    dd if="$data/large/large$(( $1 + 2 )).bin" of="$2" bs=4M count=$(( per - gib )) \
      iflag=count_bytes oflag=append conv=notrunc status=none
  fi
}
fs=${FS:-ext4}
case $fs in ext4|ext4nj|xfs) ;; *) echo "FS must be ext4, ext4nj or xfs" >&2; exit 2 ;; esac
fresh_fs_on "$img" "$mnt" "$data/$shape" "$fs"
sync; echo 3 > /proc/sys/vm/drop_caches
if [ "$mode" != read ]; then
  for k in 0 1; do source_to $k /dev/null; done
fi
t0=$(date +%s.%N)
since() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b - a}'; }
if [ "$mode" != write ]; then
  (cd "$data/$shape" && find . -type f -print0 | xargs -0 -P 16 -n 64 cat > /dev/null
   echo "read $bytes bytes cold: done at $(since) s") &
fi
if [ "$mode" != read ]; then
  (for k in 0 1; do
     source_to $k "$mnt/w$k" &
   done
   wait; sync
   echo "wrote $(( 2 * per )) bytes and synced: done at $(since) s") &
fi
wait
