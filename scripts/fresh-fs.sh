# Sourced by bench.sh, fresh-run.sh and disk-floor.sh: the destination every run gets, a new
# ext4 (default mkfs, with journal) or XFS (default mkfs) on a loop device over a file (direct
# I/O to it, so the page cache holds one copy of the data, not two).
#   fresh_fs_on IMG MNT DIR [ext4|xfs]   makes and mounts a filesystem (default ext4) at MNT
#                                        with room for two copies of DIR
#   fresh_fs_on IMG MNT =BYTES:FILES ... the same with room for two copies of BYTES in FILES
#   fresh_fs_off              unmounts and detaches it (safe to repeat); the image stays, cached
# The image is written through once and kept: over a sparse file every block a copy writes would
# be allocated twice, in the new ext4 and again in the root filesystem under the image (and the
# host's first touch of it), which a real partition does not do. Measured with `large` cold:
# ferry 4.02-4.54 s over a sparse image, 3.10-3.24 s over a written one; fio's writers of new
# files 1.09-1.12 GB/s and 1.19-1.56 GB/s. mkfs is given the size the shape needs, so the
# filesystem's geometry does not depend on how big the cached image has grown.
fresh_img=""; fresh_mnt=""; fresh_loop=""
fresh_fs_off() {
  if [ -n "$fresh_mnt" ] && mountpoint -q "$fresh_mnt"; then umount "$fresh_mnt"; fi
  if [ -n "$fresh_loop" ]; then losetup -d "$fresh_loop"; fresh_loop=""; fi
  # A mount namespace made while it was mounted (another process's unshare, `ip netns exec`)
  # holds a copy of the mount: the filesystem lives on there, its loop device stays bound
  # to the image, and it writes its last log into the image after the next mkfs (seen: XFS
  # "Metadata CRC error", EUCLEAN in the next run). The image is reused only once free.
  if [ -n "$fresh_img" ]; then
    local i
    for ((i = 0; i < 6000; i++)); do
      [ -z "$(losetup -j "$fresh_img")" ] && return 0
      if ((i == 50)); then echo "fresh_fs_off: waiting for $(losetup -j "$fresh_img" | cut -d: -f1), still mounted in another mount namespace" >&2; fi
      sleep 0.1
    done
    echo "fresh_fs_off: $fresh_img still bound after 10 minutes: $(losetup -j "$fresh_img")" >&2
    exit 2
  fi
}
fresh_prewrite() { # IMG MIB: IMG holds at least MIB MiB of written (not sparse) blocks
  local have=0 alloc=0
  if [ -f "$1" ]; then have=$(( $(stat -c %s "$1") / 1048576 )); alloc=$(( $(stat -c '%b*%B' "$1") / 1048576 )); fi
  if (( alloc + 1 < have )); then have=0; fi # sparse (an image of an older harness): write it all
  if (( have >= $2 )); then return; fi
  local want=$(( ($2 + 1023) / 1024 * 1024 ))
  echo "writing the fresh-fs image $1 through, ${have} -> ${want} MiB (once; kept for later runs)" >&2
  dd if=/dev/zero of="$1" bs=4M seek=$((have / 4)) count=$(((want - have) / 4)) oflag=direct conv=notrunc status=none
}
fresh_fs_on() {
  fresh_fs_off
  fresh_img=$1; fresh_mnt=$2
  # One image serves every script: a second run at once would make its filesystem under the first.
  if [ -z "${fresh_lock:-}" ]; then
    exec {fresh_lock}>"$fresh_img.lock"
    flock -n "$fresh_lock" || { echo "$fresh_img is in use by another benchmark run" >&2; exit 2; }
  fi
  local bytes files mib
  if [[ $3 =~ ^=([0-9]+):([0-9]+)$ ]]; then bytes=${BASH_REMATCH[1]}; files=${BASH_REMATCH[2]}
  else bytes=$(du -sb "$3" | cut -f1); files=$(find "$3" | wc -l); fi
  mib=$(( bytes * 2 / 1048576 + 2048 ))
  fresh_prewrite "$fresh_img" "$mib"
  # Inode tables written now (not by the lazy-init thread during the run); no discard pass.
  fresh_loop=$(losetup --direct-io=on --sizelimit $((mib * 1048576)) -f --show "$fresh_img")
  case ${4:-ext4} in
    ext4) mkfs.ext4 -q -F -N $((files * 2 + 10000)) -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$fresh_loop" ;;
    # An ext4 without a journal, like this VM's root filesystem, but new.
    ext4nj) mkfs.ext4 -q -F -O ^has_journal -N $((files * 2 + 10000)) -E lazy_itable_init=0,nodiscard "$fresh_loop" ;;
    # XFS allocates inodes as it goes; -K: no discard pass over the image.
    xfs) mkfs.xfs -q -f -K "$fresh_loop" ;;
    *) echo "fresh_fs_on: unknown filesystem type $4" >&2; exit 2 ;;
  esac
  mkdir -p "$fresh_mnt"; mount "$fresh_loop" "$fresh_mnt"
}
