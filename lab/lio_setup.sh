#!/bin/bash
# Runs INSIDE the lab guest, as root.  Sets up LIO (configfs) with tcm_loop + fileio for the
# device conformance suite (lab/guest_suite.py): two identical "sides", one used only
# through prguard (p) and one only through qemu-pr-helper (c), plus a pair for the fencing
# story (f).  Per side:
#   <s>A, <s>B : one LU through two tcm_loop targets (two I_T nexuses = two cluster nodes);
#                initiators naa.50014050000000b1 (A) and naa.50014050000000c1 (B), created in
#                that order so A's target port is RTPI 1 and B's RTPI 2 on both sides
#   <s>S       : its own LU through one target, initiator naa.50014050000000a1
# and LU d through one target (dA), for the device-mapper maps made over it (lab/dm_maps.py).
# The initiator names (hence TransportIDs) and RTPIs are the same on both sides, so READ FULL
# STATUS and REGISTER AND MOVE bytes are comparable; target names and LU serials differ.
# Then waits for the sd and sg nodes and prints ONE line of JSON on stdout:
#   {"pA": {"sd": "/dev/sdX", "sg": "/dev/sgN", ...}, "pB": {...}, ...}
# (all found from sysfs), also written to $1, or to $LAB_RESULTS/lio.json when
# LAB_RESULTS is set.  Progress/diagnostics go to stderr.
#
# Layouts "multipath", "fencing" and "nested" add, after the paths, a dm-multipath map over
# two of them (see MAPS); its entry in the JSON is keyed by the map's name:
#   "mpatha": {"map": "/dev/mapper/mpatha", "dm": "dm-N", "uuid": "mpath-<WWID>", "paths": [...]}
#
# Environment knobs: LIO_SIZE_MB (16), LIO_IMG_DIR (/run/lio), LIO_DEV_DIR (/run/lio/dev:
# where nodes are mknod'ed when /dev lacks them), LIO_DBROOT (/run/lio/db), LIO_WAIT_S (30).
set -euo pipefail

OUT="${1:-${LAB_RESULTS:+$LAB_RESULTS/lio.json}}"
SIZE_MB="${LIO_SIZE_MB:-16}"
IMG_DIR="${LIO_IMG_DIR:-/run/lio}"
DEV_DIR="${LIO_DEV_DIR:-/run/lio/dev}"
DBROOT="${LIO_DBROOT:-/run/lio/db}"
WAIT_S="${LIO_WAIT_S:-30}"

# LIO_LAYOUT picks what to build: "suite" (default: everything above), "fencing" (the f
# pair for the demo, and its second act: LU g that node A reaches through gA and gA2,
# two initiator ports joined by the map mpathg, and node B through gB), "nested" (one LU
# n behind nA and nB, for the nested-QEMU test, and LU nm behind nmA and nmB joined by the
# map mpathn, its second disk) or "multipath": LU m behind mA and mB (one host's two
# paths: two initiator ports, two target ports) joined by the map mpatha, mC (a second
# cluster node) and mO (a nexus that only observes: a read through a nexus takes the
# unit attentions queued for it); LU r is the single-path reference with the same nodes
# (rA is the first host, rC the second).
# backstore  unit serial (stable VPD 0x80 / 0x83 identifiers across runs)
# name  target-wwn  initiator-wwn  backstore   (order matters: RTPIs are given per LU in
# creation order)
MAPS=()
case "${LIO_LAYOUT:-suite}" in
  suite)
    BACKSTORES=(
      "p  6c1a0011-0000-4000-8000-000000000011"
      "ps 6c1a0012-0000-4000-8000-000000000012"
      "c  6c1a0021-0000-4000-8000-000000000021"
      "cs 6c1a0022-0000-4000-8000-000000000022"
      "f  6c1a0031-0000-4000-8000-000000000031"
      "d  6c1a0061-0000-4000-8000-000000000061"
    )
    PATHS=(
      "pA naa.50014050000011b0 naa.50014050000000b1 p"
      "pB naa.50014050000011c0 naa.50014050000000c1 p"
      "pS naa.50014050000011a0 naa.50014050000000a1 ps"
      "cA naa.50014050000021b0 naa.50014050000000b1 c"
      "cB naa.50014050000021c0 naa.50014050000000c1 c"
      "cS naa.50014050000021a0 naa.50014050000000a1 cs"
      "fA naa.50014050000031b0 naa.50014050000000b1 f"
      "fB naa.50014050000031c0 naa.50014050000000c1 f"
      "dA naa.50014050000061b0 naa.50014050000000b1 d"
    ) ;;
  fencing)
    BACKSTORES=(
      "f  6c1a0031-0000-4000-8000-000000000031"
      "g  6c1a0071-0000-4000-8000-000000000071"
    )
    PATHS=(
      "fA naa.50014050000031b0 naa.50014050000000b1 f"
      "fB naa.50014050000031c0 naa.50014050000000c1 f"
      "gA naa.50014050000071b0 naa.50014050000000b1 g"
      "gA2 naa.50014050000071b1 naa.50014050000000b2 g"
      "gB naa.50014050000071c0 naa.50014050000000c1 g"
    )
    MAPS=("mpathg gA gA2") ;;
  nested)
    BACKSTORES=(
      "n  6c1a0041-0000-4000-8000-000000000041"
      "nm 6c1a0042-0000-4000-8000-000000000042"
    )
    PATHS=(
      "nA naa.50014050000041b0 naa.50014050000000b1 n"
      "nB naa.50014050000041c0 naa.50014050000000c1 n"
      "nmA naa.50014050000042b0 naa.50014050000000b1 nm"
      "nmB naa.50014050000042c0 naa.50014050000000c1 nm"
    )
    MAPS=("mpathn nmA nmB") ;;
  multipath)
    BACKSTORES=(
      "m  6c1a0051-0000-4000-8000-000000000051"
      "r  6c1a0052-0000-4000-8000-000000000052"
    )
    PATHS=(
      "mA naa.50014050000051b0 naa.50014050000000b1 m"
      "mB naa.50014050000051c0 naa.50014050000000c1 m"
      "mC naa.50014050000051d0 naa.50014050000000d1 m"
      "mO naa.50014050000051e0 naa.50014050000000e1 m"
      "rA naa.50014050000052b0 naa.50014050000000b1 r"
      "rC naa.50014050000052d0 naa.50014050000000d1 r"
    )
    # name  paths (round-robin, one I/O per path before switching)
    MAPS=("mpatha mA mB") ;;
  *) echo "lio_setup: unknown LIO_LAYOUT ${LIO_LAYOUT}" >&2; exit 2 ;;
esac

log() { echo "lio_setup: $*" >&2; }
die() { echo "lio_setup: ERROR: $*" >&2; exit 1; }

C=/sys/kernel/config/target

# --- dbroot (PR metadata, see LAB.md): LIO writes <dbroot>/pr/aptpl_<serial> on every
# registration change and answers CHECK CONDITION 02/08/00 if that fails.  Make every
# candidate writable BEFORE target_core_mod loads, then pin it explicitly if allowed.
mkdir -p /var/target/pr "$DBROOT/pr" "$IMG_DIR" "$DEV_DIR"
[[ -d /etc/target ]] && mkdir -p /etc/target/pr

for m in target_core_mod target_core_file tcm_loop sd_mod sg; do
  modprobe "$m" || die "modprobe $m failed"
done
if ! mountpoint -q /sys/kernel/config; then
  mount -t configfs none /sys/kernel/config || die "cannot mount configfs"
fi
[[ -d $C ]] || die "$C missing after loading target_core_mod"

if [[ -w $C/dbroot ]] && echo "$DBROOT" > "$C/dbroot" 2>/dev/null; then :; fi
ACTUAL_DBROOT="$(cat "$C/dbroot" 2>/dev/null || echo /var/target)"
mkdir -p "$ACTUAL_DBROOT/pr" || die "cannot create $ACTUAL_DBROOT/pr"
log "dbroot=$ACTUAL_DBROOT"

# --- backstores
mk_backstore() {  # name serial
  local name=$1 serial=$2 d=$C/core/fileio_0/$1 img=$IMG_DIR/$1.img
  [[ -d $d ]] && return 0
  truncate -s "${SIZE_MB}M" "$img"
  mkdir -p "$d"
  echo "fd_dev_name=$img,fd_dev_size=$((SIZE_MB * 1024 * 1024))" > "$d/control"
  echo "$serial" > "$d/wwn/vpd_unit_serial"
  echo 1 > "$d/enable"
}
for b in "${BACKSTORES[@]}"; do
  read -r bs serial <<<"$b"
  mk_backstore "$bs" "$serial"
done

# --- tcm_loop targets: one target (one SCSI host) per path, one nexus each
for p in "${PATHS[@]}"; do
  read -r name tgt ini bs <<<"$p"
  t=$C/loopback/$tgt/tpgt_1
  if [[ ! -e $t/lun/lun_0/$bs ]]; then
    mkdir -p "$t/lun/lun_0"
    echo "$ini" > "$t/nexus"
    ln -s "$C/core/fileio_0/$bs" "$t/lun/lun_0/$bs"
  fi
done

# --- find devices from sysfs.  tcm_loop's tpgt "address" is "<host>:0:<tpgt>"; LUN 0.
node_for() {  # class(block|scsi_generic) name -> path of a usable device node
  local cls=$1 n=$2 majmin maj min type cur
  majmin=$(cat "/sys/class/$cls/$n/dev")
  maj=${majmin%:*}; min=${majmin#*:}
  [[ $cls == block ]] && type=b || type=c
  if [[ -e /dev/$n ]]; then
    cur=$(stat -c '%t:%T' "/dev/$n")   # hex major:minor
    if [[ $cur == "$(printf '%x:%x' "$maj" "$min")" ]]; then echo "/dev/$n"; return; fi
  fi
  rm -f "$DEV_DIR/$n"
  mknod "$DEV_DIR/$n" "$type" "$maj" "$min"
  echo "$DEV_DIR/$n"
}

json="{"
sep=""
for p in "${PATHS[@]}"; do
  read -r name tgt ini bs <<<"$p"
  addr=$(tr -d '\n' < "$C/loopback/$tgt/tpgt_1/address")   # H:0:T
  hctl="$addr:0"
  sysdev=/sys/bus/scsi/devices/$hctl
  sd="" sg=""
  for ((i = 0; i < WAIT_S * 10; i++)); do
    if [[ -d $sysdev/block && -d $sysdev/scsi_generic ]]; then
      sd=$(ls "$sysdev/block" | head -n1)
      sg=$(ls "$sysdev/scsi_generic" | head -n1)
      [[ -n $sd && -n $sg && -e /sys/class/block/$sd/dev && -e /sys/class/scsi_generic/$sg/dev ]] && break
    fi
    sleep 0.1
  done
  [[ -n $sd && -n $sg ]] || die "no sd/sg for $name ($hctl) after ${WAIT_S}s: $(ls "$sysdev" 2>&1 | tr '\n' ' ')"
  sdpath=$(node_for block "$sd")
  sgpath=$(node_for scsi_generic "$sg")
  serial=$(cat "$C/core/fileio_0/$bs/wwn/vpd_unit_serial" | sed 's/.*: *//')
  log "$name: $hctl $sdpath $sgpath target=$tgt initiator=$ini lu=$bs"
  json+="$sep\"$name\": {\"sd\": \"$sdpath\", \"sg\": \"$sgpath\", \"hctl\": \"$hctl\", \"target_wwn\": \"$tgt\", \"initiator_wwn\": \"$ini\", \"backstore\": \"fileio_0/$bs\", \"serial\": \"$serial\"}"
  sep=", "
done

# block devices: wait until the size is known (sd probe finished)
for ((i = 0; i < WAIT_S * 10; i++)); do
  all=1
  for d in /sys/class/block/sd*; do [[ $(cat "$d/size") != 0 ]] || all=0; done
  ((all)) && break
  sleep 0.1
done

# --- dm-multipath maps, made with dmsetup as multipath(8) would: uuid "mpath-<WWID>", the
# WWID being what multipath-tools derives from VPD page 0x83 ("3" + the NAA designator).
declare -A SD_OF
if ((${#MAPS[@]})); then
  modprobe dm_multipath && modprobe dm_round_robin || die "modprobe dm_multipath/dm_round_robin failed"
  for p in "${PATHS[@]}"; do
    read -r name tgt _ <<<"$p"
    addr=$(tr -d '\n' < "$C/loopback/$tgt/tpgt_1/address")
    SD_OF[$name]=$(ls "/sys/bus/scsi/devices/$addr:0/block" | head -n1)
  done
fi
for m in "${MAPS[@]}"; do
  read -r mname mpaths <<<"$m"
  read -r -a members <<<"$mpaths"
  first=${SD_OF[${members[0]}]}
  wwid=$(tr -d '\n' < "/sys/block/$first/device/wwid")
  [[ $wwid == naa.* ]] || die "$first: unexpected wwid '$wwid'"
  uuid="mpath-3${wwid#naa.}"
  sectors=$(cat "/sys/block/$first/size")
  table="0 $sectors multipath 0 0 1 1 round-robin 0 ${#members[@]} 1"
  slaves=""
  for member in "${members[@]}"; do
    sd=${SD_OF[$member]}
    [[ $(tr -d '\n' < "/sys/block/$sd/device/wwid") == "$wwid" ]] || die "$member ($sd) is not $wwid"
    table+=" $(cat "/sys/block/$sd/dev") 1"
    slaves+="${slaves:+, }\"$member\""
  done
  if [[ ! -e /dev/mapper/$mname ]]; then
    dmsetup create "$mname" --noudevsync --uuid "$uuid" --table "$table" \
      || die "dmsetup create $mname failed"
    dmsetup mknodes "$mname" >/dev/null 2>&1 || true
  fi
  dm=$(basename "$(readlink -f "/sys/dev/block/$(dmsetup info -c --noheadings -o major,minor --separator : "$mname")")")
  [[ -e /dev/mapper/$mname ]] || die "/dev/mapper/$mname missing"
  log "$mname: $dm $uuid table: $table"
  json+="$sep\"$mname\": {\"map\": \"/dev/mapper/$mname\", \"dm\": \"$dm\", \"uuid\": \"$uuid\", \"paths\": [$slaves]}"
  sep=", "
done
json+="}"

if [[ -n $OUT ]]; then printf '%s\n' "$json" > "$OUT"; fi
printf '%s\n' "$json"
