#!/usr/bin/env bash
# Make the demo's guest from Debian packages: the kernel of Debian's
# linux-image-amd64 (unpacked with dpkg-deb, never installed on the host)
# and an initramfs holding busybox-static and the workload (guest/), built
# static here.  Output: build/guest/{vmlinuz,initrd.img}.  Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
time_phase guest

G="$BUILD/guest"
out_kernel="$G/vmlinuz" out_initrd="$G/initrd.img"
inputs=("$TOP/guest/workload.c" "$TOP/guest/init" "$TOP/guest/mkinitramfs.py"
        "$TOP/scripts/make-guest.sh")
fresh=1
for f in "${inputs[@]}"; do
    [ -f "$out_initrd" ] && [ "$out_initrd" -nt "$f" ] || fresh=0
done
if [ "$fresh" = 1 ] && [ -f "$out_kernel" ]; then
    say "guest is up to date: $out_kernel, $out_initrd"
    exit 0
fi

mkdir -p "$G/dl"
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
             awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || die "cannot resolve linux-image-amd64 to a kernel package"
for p in "$kernel_pkg" busybox-static; do
    if ! ls "$G/dl/${p}_"*.deb >/dev/null 2>&1; then
        say "downloading $p"
        (cd "$G/dl" && apt-get download -q -o APT::Sandbox::User=root "$p" >/dev/null) ||
            die "apt-get download $p failed"
    fi
done

rm -rf "$G/kernel" "$G/busybox" "$G/root"
dpkg-deb -x "$(ls "$G/dl/${kernel_pkg}_"*.deb | sed -n 1p)" "$G/kernel"
cp "$(ls "$G"/kernel/boot/vmlinuz-* | sed -n 1p)" "$out_kernel"
dpkg-deb -x "$(ls "$G"/dl/busybox-static_*.deb | sed -n 1p)" "$G/busybox"

mkdir -p "$G/root"/{bin,dev,proc,sys,lib/modules}
cp "$G/busybox/bin/busybox" "$G/root/bin/busybox"
# virtio-blk for the vhost-user test (wl.blk=N); Debian builds it as modules
for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev \
         virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk; do
    cp "$(ls -d "$G"/kernel/lib/modules/*/kernel/drivers | sed -n 1p)/$m.ko" \
       "$G/root/lib/modules/"
done
gcc -O2 -static -pthread -Wall -Wextra -Werror -o "$G/root/bin/workload" "$TOP/guest/workload.c"
install -m 755 "$TOP/guest/init" "$G/root/init"
python3 "$TOP/guest/mkinitramfs.py" "$G/root" "$out_initrd.tmp"
mv "$out_initrd.tmp" "$out_initrd"
rm -rf "$G/kernel" "$G/busybox"
say "guest: $out_kernel ($kernel_pkg), $out_initrd ($(du -h "$out_initrd" | cut -f1))"
