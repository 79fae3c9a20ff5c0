# Sourced by bench.sh -f, fresh-run.sh and disk-floor.sh: the destination every run gets, a new
# ext4 (default mkfs, with journal) on a loop device over a file (direct I/O to it, so the page
# cache holds one copy of the data, not two).
#   fresh_fs_on IMG MNT DIR   makes and mounts an ext4 at MNT with room for two copies of DIR
#   fresh_fs_off              unmounts and detaches it and removes its image (safe to repeat)
fresh_img=""; fresh_mnt=""; fresh_loop=""
fresh_fs_off() {
  if [ -n "$fresh_mnt" ] && mountpoint -q "$fresh_mnt"; then umount "$fresh_mnt"; fi
  if [ -n "$fresh_loop" ]; then losetup -d "$fresh_loop"; fresh_loop=""; fi
  if [ -n "$fresh_img" ]; then rm -f "$fresh_img"; fi
}
fresh_fs_on() {
  fresh_fs_off
  fresh_img=$1; fresh_mnt=$2
  local bytes files
  bytes=$(du -sb "$3" | cut -f1); files=$(find "$3" | wc -l)
  truncate -s $(( bytes * 2 / 1048576 + 2048 ))M "$fresh_img"
  # Inode tables written now (not by the lazy-init thread during the run); no discard pass.
  mkfs.ext4 -q -F -N $((files * 2 + 10000)) -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$fresh_img"
  fresh_loop=$(losetup --direct-io=on -f --show "$fresh_img")
  mkdir -p "$fresh_mnt"; mount "$fresh_loop" "$fresh_mnt"
}
