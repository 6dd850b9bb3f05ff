#!/usr/bin/env bash
# Rebuilds demo.qcow2: a 256 MiB disk with an MBR, one FAT partition and a few files, compressed qcow2.
# Needs mtools, dosfstools, qemu-utils. The image is committed; this script only documents how it was made.
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
truncate -s 256M "$work/disk.raw"
printf 'o\nn\np\n1\n2048\n\nt\nc\nw\n' | /sbin/fdisk "$work/disk.raw" >/dev/null 2>&1 || true
truncate -s 255M "$work/part.raw"
mkfs.vfat -n CDIDEMO "$work/part.raw" >/dev/null
printf 'Imported by cdi.\n' > "$work/README.TXT"
seq 1 200000 > "$work/NUMBERS.TXT"
mcopy -i "$work/part.raw" "$work/README.TXT" "$work/NUMBERS.TXT" ::
dd if="$work/part.raw" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
qemu-img convert -c -f raw -O qcow2 "$work/disk.raw" "$(dirname "$0")/demo.qcow2"
