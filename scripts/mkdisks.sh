#!/usr/bin/env bash
# Loop-device filesystems that act as a cluster's disks, for tests and demos.
#
#   scripts/mkdisks.sh DIR N [SIZE_MB]   make N disks under DIR (DIR/disk0 ... DIR/diskN-1),
#                                        alternating ext4 and xfs (ext4 only without mkfs.xfs),
#                                        print one mount point per line
#   scripts/mkdisks.sh --remove DIR      unmount them and delete DIR
#
# Needs root and loop devices. Without them (or with FERRY_PLAIN_DISKS=1) it makes plain
# directories instead and says so on stderr, so callers still get N usable paths.
set -euo pipefail

if [[ "${1:-}" == "--remove" ]]; then
    dir=${2:?usage: mkdisks.sh --remove DIR}
    for m in "$dir"/disk*; do
        [[ -d "$m" ]] || continue
        if mountpoint -q "$m" 2>/dev/null; then
            umount "$m" || umount -l "$m"
        fi
    done
    rm -rf "$dir"
    exit 0
fi

dir=${1:?usage: mkdisks.sh DIR N [SIZE_MB]}
n=${2:?usage: mkdisks.sh DIR N [SIZE_MB]}
size=${3:-256}
mkdir -p "$dir/images"

plain() {
    echo "mkdisks: $1; using plain directories" >&2
    for ((i = 0; i < n; i++)); do
        mkdir -p "$dir/disk$i"
        echo "$dir/disk$i"
    done
    exit 0
}

[[ "${FERRY_PLAIN_DISKS:-0}" == 1 ]] && plain "FERRY_PLAIN_DISKS=1"
[[ $(id -u) -eq 0 ]] || plain "not root"
command -v mkfs.ext4 >/dev/null || plain "mkfs.ext4 not found (apt-get install e2fsprogs)"

for ((i = 0; i < n; i++)); do
    img="$dir/images/disk$i.img"
    mnt="$dir/disk$i"
    mkdir -p "$mnt"
    truncate -s "${size}M" "$img"
    if ((i % 2 == 1)) && command -v mkfs.xfs >/dev/null && ((size >= 300)); then
        mkfs.xfs -q -f "$img" >/dev/null
    else
        mkfs.ext4 -q -F -m 0 "$img" >/dev/null
    fi
    if ! mount -o loop "$img" "$mnt" 2>/dev/null; then
        # Undo what was mounted, then fall back.
        for m in "$dir"/disk*; do mountpoint -q "$m" && umount "$m"; done
        rm -rf "$dir/images"
        plain "cannot mount a loop device"
    fi
    echo "$mnt"
done
