#!/bin/busybox sh
# /init of the NESTED guest (lab/nested_build.py puts it in the initramfs).
# Loads the virtio-scsi and sd modules, waits for the scsi-block disk (/dev/sda), then
# serves a line protocol on the second serial port (ttyS1, a unix socket chardev of the
# outer QEMU, read by lab/nested_outer.py):
#   guest -> outer   "@@READY <uptime>"                   once the disk is there
#   outer -> guest   "<shell command>"                     one line
#   guest -> outer   its stdout+stderr, then "@@END <rc>"
#   outer -> guest   "@@POWEROFF"                          ends the guest
# The kernel console (ttyS0) goes to a file on the outer side, for debugging.
/bin/busybox mkdir -p /usr/sbin /sbin /proc /sys /dev /tmp
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for ko in $(cat /modules.order); do
  insmod "$ko" 2>/dev/null || echo "nested_init: insmod $ko failed (may be harmless)"
done
i=0
while [ ! -b /dev/sda ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/sda ] || echo "nested_init: no /dev/sda after 60 s"
stty -F /dev/ttyS1 raw -echo 115200
exec 3<>/dev/ttyS1
echo "@@READY $(cut -d' ' -f1 /proc/uptime) $(ls /dev/sd* 2>/dev/null | tr '\n' ' ')" >&3
while IFS= read -r line <&3; do
  case "$line" in
    @@POWEROFF) break ;;
    "") continue ;;
  esac
  sh -c "$line" > /tmp/out 2>&1
  rc=$?
  cat /tmp/out >&3
  echo "@@END $rc" >&3
done
sync
poweroff -f
