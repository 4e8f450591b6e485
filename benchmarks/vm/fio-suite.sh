#!/usr/bin/env bash
# Guest side of `./dev bench`: measures every device with fio within ONE boot, so
# that the figures compare as ratios to brd. Runs as root inside the VM started
# by `./dev vm`, which has the dm-user module loaded and the host root mounted
# read-only; everything it writes goes to a tmpfs, and after each device its
# results leave the guest as a base64 tarball on stdout between two marker
# lines (the console is the only way out of the guest that ./dev vm
# guarantees), so a run cut short still reports the devices it finished.
#
#   fio-suite.sh [--build DIR] [--runtime S] [--ramp S] [--size-mb N]
#                [--devices "brd nullb ..."] [--profile] [--quick]
#                [--figures "randread-4k-qd1 ..."] [--ramdisk-args "--poll-us 50"]
#                [--profile-devices "ramdisk2"] [--profile-figures "randread-4k-qd32 ..."]
#                [--no-ceph] [--ceph-size-mb N]
#
# The devices, in order (--devices picks some): brd nullb loop nbd dmnbd legacy ramdisk1
# ramdisk2 ext4 tmpfs brd_end, then the Ceph section: krbd rbdnbd dmrbd fiorbd, one RBD image on
# a one-node cluster started in this boot (tests/vm/ceph-lib.bash). The Ceph section comes
# after brd_end because the cluster's OSD keeps its data on a brd ramdisk of its own.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=$REPO/build-bench
RUNTIME=6
RAMP=1
SIZE_MB=512
PROFILE=0
PROFILE_DEVICES="ramdisk2"
ONLY_FIGURES=""
RAMDISK_ARGS=""
PROFILE_FIGURES="randread-4k-qd32 randwrite-4k-qd32"
CEPH_DEVICES="krbd rbdnbd dmrbd fiorbd"
DEVICES="brd nullb loop nbd dmnbd legacy ramdisk1 ramdisk2 ext4 tmpfs brd_end $CEPH_DEVICES"
# The RBD image: smaller than the other devices, since filling it goes through the OSD.
CEPH_SIZE_MB=256
while [ $# -gt 0 ]; do
    case $1 in
        --build) BUILD=$2; shift ;;
        --runtime) RUNTIME=$2; shift ;;
        --ramp) RAMP=$2; shift ;;
        --size-mb) SIZE_MB=$2; shift ;;
        --devices) DEVICES=$2; shift ;;
        --figures) ONLY_FIGURES=$2; shift ;;
        --ramdisk-args) RAMDISK_ARGS=$2; shift ;;
        --profile) PROFILE=1 ;;
        --profile-devices) PROFILE=1; PROFILE_DEVICES=$2; shift ;;
        --profile-figures) PROFILE=1; PROFILE_FIGURES=$2; shift ;;
        --quick) RUNTIME=2; RAMP=1 ;;
        --no-ceph) DEVICES=" $DEVICES "
            for d in $CEPH_DEVICES; do DEVICES=${DEVICES/ $d / }; done ;;
        --ceph-size-mb) CEPH_SIZE_MB=$2; shift ;;
        *) echo "fio-suite: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

OUT=/tmp/bench-out
WORK=/tmp/bench-work
SECTORS=$((SIZE_MB * 2048))
rm -rf "$OUT" "$WORK"
mkdir -p "$OUT" "$WORK"
# Keep kernel messages off the console: they would tear the tarball's lines.
dmesg -n 1 2>/dev/null || true

# Every exec over the guest's 9p root costs seconds of TCG time (fio alone
# maps 64 libraries): run fio from a tmpfs copy that ./dev bench staged in
# $BUILD/bench/stage (fio, its libraries, ld.so), and spawn nothing else while
# a figure is measured (bash builtins only).
# The loader runs under a link named fio, so that fio's processes are still
# called "fio" (the iou-wrk count tells fio's threads by that name).
FIO=(fio)
if [ -x "$BUILD/bench/stage/fio" ] && cp -a "$BUILD/bench/stage" "$WORK/stage" &&
    mkdir "$WORK/stage/bin" && ln -s ../ld.so "$WORK/stage/bin/fio"; then
    FIO=("$WORK/stage/bin/fio" --library-path "$WORK/stage/lib" "$WORK/stage/fio")
fi
# nap SECONDS: sleep without a fork.
exec {NAP_FD}<> <(:)
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }

# The figures: name, fio arguments. Kept in this order: reads first on a device
# filled by the prefill pass, writes last.
FIGURES=(
    "randread-4k-qd1|--rw=randread --bs=4k --iodepth=1 --lat_percentiles=1"
    "randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
    "randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32"
    "read-1m-qd8|--rw=read --bs=1m --iodepth=8"
    "write-1m-qd8|--rw=write --bs=1m --iodepth=8"
)
if [ -n "$ONLY_FIGURES" ]; then
    kept=()
    for fig in "${FIGURES[@]}"; do
        [[ " $ONLY_FIGURES " == *" ${fig%%|*} "* ]] && kept+=("$fig")
    done
    FIGURES=("${kept[@]}")
fi
read -r -a DEVLIST <<<"$DEVICES"
TOTAL=$((${#DEVLIST[@]} * ${#FIGURES[@]}))
STEP=0
T0=$SECONDS

log() { printf '[bench %4ds] %s\n' $((SECONDS - T0)) "$*"; }
# The console, for progress from inside a device's setup (whose output goes to its setup.log).
exec {CONSOLE_FD}>&1
log_console() { log "$@" >&"$CONSOLE_FD"; }

# status DEVICE TEXT: the device's outcome for the report ("ok", "not built: ...",
# "failed: ...").
status() { printf '%s\n' "$2" >"$OUT/$1/status"; }

# --- io_uring worker threads --------------------------------------------------
# iou_wrk_count: "fio=N daemon=N other=N", counting threads named iou-wrk-* by
# the process that owns them. DAEMON_PIDS holds the pids of the device's daemon.
DAEMON_PIDS=""
iou_wrk_count() {
    local fio=0 daemon=0 other=0 p t c n comm pid
    for p in /proc/[0-9]*; do
        n=0
        for t in "$p"/task/*/comm; do
            read -r c 2>/dev/null <"$t" || continue
            case $c in iou-wrk*) n=$((n + 1)) ;; esac
        done
        [ "$n" -eq 0 ] && continue
        pid=${p#/proc/}
        read -r comm 2>/dev/null <"$p/comm" || comm="?"
        if [[ " $DAEMON_PIDS " == *" $pid "* ]]; then
            daemon=$((daemon + n))
        elif [ "$comm" = fio ]; then
            fio=$((fio + n))
        else
            other=$((other + n))
        fi
    done
    echo "fio=$fio daemon=$daemon other=$other"
}

# sample_iou_wrk FILE: while fio runs, sample three times after the ramp and
# keep the largest count of each kind.
sample_iou_wrk() {
    local file=$1 s mf=0 md=0 mo=0 f d o
    nap "$RAMP"
    for _ in 1 2 3; do
        nap "$((RUNTIME / 4)).$((RUNTIME * 25 % 100))"
        s=$(iou_wrk_count)
        f=${s#fio=}; f=${f%% *}
        d=${s#*daemon=}; d=${d%% *}
        o=${s##*other=}
        [ "$f" -gt "$mf" ] && mf=$f
        [ "$d" -gt "$md" ] && md=$d
        [ "$o" -gt "$mo" ] && mo=$o
    done
    echo "fio=$mf daemon=$md other=$mo" >"$file"
}

# --- fio ----------------------------------------------------------------------
# cpu_ticks: "busy total" jiffies of the whole guest, from /proc/stat.
cpu_ticks() {
    local user nice sys idle iowait irq softirq steal rest
    read -r _ user nice sys idle iowait irq softirq steal rest </proc/stat
    echo "$((user + nice + sys + irq + softirq + steal)) $((user + nice + sys + idle + iowait + irq + softirq + steal))"
}

# pid_ticks PID: the process's user + system jiffies, from /proc/PID/stat.
NCPU=$(nproc)
OSD_PID=""
pid_ticks() {
    local f
    read -r -a f 2>/dev/null <"/proc/$1/stat" || return 1
    echo $((f[13] + f[14]))
}

# fio_headline FILE: "12.3k IOPS, 48 MiB/s" from fio's JSON, by bash alone:
# the first non-zero "iops" and "bw" (the read side, else the write side).
fio_headline() {
    local line iops="" bw=""
    while IFS= read -r line; do
        if [ -z "$iops" ] && [[ $line =~ ^[[:space:]]*\"iops\"\ :\ ([0-9]+) ]] &&
            [ "${BASH_REMATCH[1]}" != 0 ]; then
            iops=${BASH_REMATCH[1]}
        elif [ -z "$bw" ] && [[ $line =~ ^[[:space:]]*\"bw\"\ :\ ([0-9]+) ]] &&
            [ "${BASH_REMATCH[1]}" != 0 ]; then
            bw=${BASH_REMATCH[1]}
        fi
        [ -n "$iops" ] && [ -n "$bw" ] && break
    done <"$1"
    [ -n "$iops" ] || { echo "no I/O"; return; }
    echo "$((iops / 1000)).$((iops % 1000 / 100))k IOPS, $((bw / 1024)) MiB/s"
}

# run_fio DEVICE TARGET DIRECT: the five figures on TARGET (a block device or a
# file), JSON to $OUT/DEVICE/FIGURE.json.
run_fio() {
    local dev=$1 target=$2 direct=$3 fig name args summary sampler=""
    for fig in "${FIGURES[@]}"; do
        name=${fig%%|*}
        args=${fig#*|}
        STEP=$((STEP + 1))
        sampler=""
        if [[ $name == *qd32 ]]; then
            sample_iou_wrk "$OUT/$dev/$name.iouwrk" &
            sampler=$!
        fi
        local cpu0 cpu1 io=(--filename="$target" --ioengine=io_uring --direct="$direct")
        # rbd:POOL/IMAGE: fio's own rbd engine, librbd with no block device at all.
        if [[ $target == rbd:* ]]; then
            local spec=${target#rbd:}
            io=(--ioengine=rbd --clientname=admin --pool="${spec%/*}" --rbdname="${spec#*/}")
        fi
        cpu0=$(cpu_ticks)
        local osd0="" osd1
        [ -n "$OSD_PID" ] && osd0=$(pid_ticks "$OSD_PID")
        # shellcheck disable=SC2086
        "${FIO[@]}" --name="$name" --size="${SIZE_MB}m" "${io[@]}" $args \
            --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
            --norandommap --randrepeat=0 --group_reporting \
            --output-format=json --output="$OUT/$dev/$name.json" \
            >"$OUT/$dev/$name.log" 2>&1
        local rc=$?
        # The whole guest's CPU use during the run (both vCPUs, ramp included).
        cpu1=$(cpu_ticks)
        local busy=$((${cpu1% *} - ${cpu0% *})) total=$((${cpu1#* } - ${cpu0#* }))
        [ "$total" -gt 0 ] && echo "$((100 * busy / total)).$((1000 * busy / total % 10))" >"$OUT/$dev/$name.cpu"
        # The Ceph OSD's own CPU, in % of one vCPU: whether the cluster is the bottleneck.
        if [ -n "$osd0" ] && [ "$total" -gt 0 ] && osd1=$(pid_ticks "$OSD_PID"); then
            echo "$((100 * (osd1 - osd0) * NCPU / total))" >"$OUT/$dev/$name.osdcpu"
        fi
        [ -n "$sampler" ] && wait "$sampler"
        if [ $rc -ne 0 ]; then
            log "[$STEP/$TOTAL] $dev $name: fio failed ($(tail -n 1 "$OUT/$dev/$name.log"))"
            continue
        fi
        summary=$(fio_headline "$OUT/$dev/$name.json")
        local extra="" w
        [ -f "$OUT/$dev/$name.iouwrk" ] && read -r w <"$OUT/$dev/$name.iouwrk" && extra=" iou-wrk: $w"
        [ -f "$OUT/$dev/$name.osdcpu" ] && read -r w <"$OUT/$dev/$name.osdcpu" && extra+=" osd: ${w}% cpu"
        log "[$STEP/$TOTAL] $dev $name: $summary$extra"
    done
}

# prefill DEVICE TARGET: write the whole device once, so reads hit real data
# and writes do not pay first-touch allocation. A slow device (nbd on a busy
# host) gets PREFILL_S seconds and a note saying how far it got.
PREFILL_S=40
prefill() {
    local dev=$1 target=$2 pid t limit=${PREFILL_LIMIT:-$PREFILL_S}
    dd if=/dev/zero of="$target" bs=1M count="$SIZE_MB" oflag=direct conv=notrunc \
        status=none 2>/dev/null &
    pid=$!
    for ((t = 0; t < limit * 10; t++)); do
        kill -0 "$pid" 2>/dev/null || break
        nap 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        echo "prefill stopped after ${limit} s: reads partly hit never-written blocks" >"$OUT/$dev/note"
        log "$dev: prefill stopped after ${limit} s"
    fi
    wait "$pid" 2>/dev/null
}

skip_figures() { STEP=$((STEP + ${#FIGURES[@]})); }

# --- the dm-user daemons --------------------------------------------------------
# The daemons' binaries, as built by meson in $BUILD. Found by name, so that a
# moved build target only needs this list changed.
find_bin() {
    local name=$1 f
    for f in "$BUILD/examples/$name/$name" "$BUILD/examples/$name" "$BUILD/tests/$name" \
        "$BUILD/$name"; do
        [ -x "$f" ] && [ -f "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}

dm_user_loaded() { grep -qw user <(dmsetup targets 2>/dev/null); }

# dm_create NAME: a `user` target of SECTORS on control device NAME, and its
# /dev/mapper node (no udev in the guest).
dm_create() {
    local name=$1
    dmsetup create "$name" --table "0 $SECTORS user 0 $SECTORS $name" || return 1
    dmsetup mknodes "$name" >/dev/null 2>&1
    for _ in {1..50}; do
        [ -c "/dev/dm-user/$name" ] && [ -b "/dev/mapper/$name" ] && return 0
        nap 0.1
    done
    return 1
}

dm_remove() {
    local name=$1
    for _ in 1 2 3 4 5; do
        dmsetup remove "$name" 2>/dev/null && return 0
        nap 0.5
    done
    dmsetup remove --force "$name" 2>/dev/null
}

# stop_daemons [SIGNAL]: send SIGNAL first if given (dmuser-ramdisk removes
# its device on SIGTERM); the legacy daemon exits by itself on ENOTBLK after
# dmsetup remove. Whatever still runs after 5 s is killed.
stop_daemons() {
    local p
    for p in $DAEMON_PIDS; do
        [ -n "${1:-}" ] && kill -"$1" "$p" 2>/dev/null
        for _ in {1..25}; do kill -0 "$p" 2>/dev/null || break; nap 0.2; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    DAEMON_PIDS=""
}

# start_daemon DEVICE CMD...: run a daemon, log to the device's folder, and
# check that it is still alive a moment later.
start_daemon() {
    local dev=$1
    shift
    "$@" >"$OUT/$dev/daemon.log" 2>&1 &
    DAEMON_PIDS="$DAEMON_PIDS $!"
    DAEMON_PIDS=${DAEMON_PIDS# }
    nap 1
    kill -0 $! 2>/dev/null
}

# --- the devices --------------------------------------------------------------
# setup_X sets TARGET (the fio target) and DIRECT; it returns non-zero, with a
# reason in $OUT/X/status when it knows one, when the device cannot be
# measured. teardown_X undoes whatever setup_X got done.
DIRECT=1
TARGET=""

setup_brd() {
    modprobe brd rd_nr=1 rd_size=$((SIZE_MB * 1024)) max_part=0 || return 1
    TARGET=/dev/ram0
}
teardown_brd() { rmmod brd; }
# brd once more at the end: how far the machine drifted during the run.
setup_brd_end() { setup_brd; }
teardown_brd_end() { teardown_brd; }

setup_nullb() {
    modprobe configfs 2>/dev/null
    mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
    modprobe null_blk nr_devices=0 || return 1
    # 6.1 names the disk after the configfs item.
    local d=/sys/kernel/config/nullb/nullb0
    mkdir "$d" || return 1
    echo "$SIZE_MB" >"$d/size"
    echo 1 >"$d/memory_backed"
    echo 4096 >"$d/blocksize"
    echo 1 >"$d/power" || return 1
    for _ in {1..20}; do
        [ -b /dev/nullb0 ] && { TARGET=/dev/nullb0; return 0; }
        nap 0.1
    done
    return 1
}
teardown_nullb() {
    echo 0 >/sys/kernel/config/nullb/nullb0/power
    rmdir /sys/kernel/config/nullb/nullb0
    rmmod null_blk
}

setup_loop() {
    mkdir -p "$WORK/loopfs"
    mount -t tmpfs -o size=$((SIZE_MB + 64))m tmpfs "$WORK/loopfs" || return 1
    fallocate -l "${SIZE_MB}M" "$WORK/loopfs/disk" || return 1
    modprobe loop 2>/dev/null
    TARGET=$(losetup --find --show "$WORK/loopfs/disk")
}
teardown_loop() {
    losetup -D
    umount "$WORK/loopfs"
}

# nbdkit_start DEVICE: the NBD server both NBD clients are measured against,
# `nbdkit memory` of SIZE_MB on a Unix socket; its pid first in DAEMON_PIDS.
nbdkit_start() {
    local dev=$1
    command -v nbdkit >/dev/null || { status "$dev" "not installed: nbdkit"; return 1; }
    rm -f "$WORK/nbd.sock"
    nbdkit --foreground --unix "$WORK/nbd.sock" memory "${SIZE_MB}M" \
        >"$OUT/$dev/nbdkit.log" 2>&1 &
    DAEMON_PIDS=$!
    for _ in {1..50}; do [ -S "$WORK/nbd.sock" ] && return 0; nap 0.1; done
    status "$dev" "failed: nbdkit made no socket ($(tail -n 1 "$OUT/$dev/nbdkit.log"))"
    return 1
}

# The kernel's NBD client (nbd-client, one connection) on nbdkit.
setup_nbd() {
    command -v nbdkit >/dev/null || { status nbd "not installed: nbdkit"; return 1; }
    command -v nbd-client >/dev/null || { status nbd "not installed: nbd-client"; return 1; }
    modprobe nbd nbds_max=2 || return 1
    nbdkit_start nbd || return 1
    nbd-client -unix "$WORK/nbd.sock" /dev/nbd0 -b 4096 >>"$OUT/nbd/daemon.log" 2>&1 || return 1
    TARGET=/dev/nbd0
}
teardown_nbd() {
    nbd-client -d /dev/nbd0 >/dev/null 2>&1
    stop_daemons
    rmmod nbd
}

# dmuser-nbd (libnbd, its socket polled on the server thread's ring) on the same
# kind of nbdkit server: one thread, so one connection, as nbd-client has.
setup_dmnbd() {
    dm_user_loaded || { status dmnbd "failed: no dm-user module loaded"; return 1; }
    local bin
    bin=$(find_bin dmuser-nbd) || { status dmnbd "not built"; return 1; }
    nbdkit_start dmnbd || return 1
    start_daemon dmnbd "$bin" --name bench-nbd --threads 1 "nbd+unix:///?socket=$WORK/nbd.sock" ||
        { status dmnbd "failed: dmuser-nbd exited ($(tail -n 1 "$OUT/dmnbd/daemon.log"))"; return 1; }
    wait_serving dmnbd bench-nbd 30
}
# dmuser-nbd first (SIGTERM removes its device), then its server.
teardown_dmnbd() {
    local server=${DAEMON_PIDS%% *}
    DAEMON_PIDS=${DAEMON_PIDS#"$server"}
    stop_daemons TERM
    DAEMON_PIDS=$server
    stop_daemons TERM
}

# The Part 1 daemon from tests/: blocking reads, one thread per channel; one
# channel, as the hand-measured baseline in issue 5.
setup_legacy() {
    dm_user_loaded || { status legacy "failed: no dm-user module loaded"; return 1; }
    local bin
    bin=$(find_bin legacy-daemon) || { status legacy "not built"; return 1; }
    dm_create bench-legacy || return 1
    start_daemon legacy "$bin" bench-legacy "${SIZE_MB}M" || return 1
    TARGET=/dev/mapper/bench-legacy
}
teardown_legacy() {
    dm_remove bench-legacy
    stop_daemons
}

# dmuser-ramdisk, the SDK's example, with 1 and 2 threads. It creates and
# removes its device itself (SIGTERM removes it).
setup_ramdisk_n() {
    local dev=$1 threads=$2 name=bench-rd$2
    dm_user_loaded || { status "$dev" "failed: no dm-user module loaded"; return 1; }
    local bin
    bin=$(find_bin dmuser-ramdisk) || { status "$dev" "not built"; return 1; }
    # shellcheck disable=SC2086
    start_daemon "$dev" "$bin" --name "$name" --size "${SIZE_MB}M" --threads "$threads" \
        $RAMDISK_ARGS || return 1
    wait_serving "$dev" "$name" 20
}

# wait_serving DEVICE NAME SECS: TARGET=/dev/mapper/NAME once the daemon last
# started (an example daemon, which creates its device itself) says it serves it.
wait_serving() {
    local dev=$1 name=$2 secs=$3 line t
    for ((t = 0; t < secs * 5; t++)); do
        while IFS= read -r line; do
            [[ $line == *serving* ]] && break 2
        done <"$OUT/$dev/daemon.log"
        kill -0 "${DAEMON_PIDS##* }" 2>/dev/null ||
            { status "$dev" "failed: the daemon exited ($(tail -n 1 "$OUT/$dev/daemon.log"))"; return 1; }
        nap 0.2
    done
    [ -b "/dev/mapper/$name" ] || dmsetup mknodes "$name" >/dev/null 2>&1
    [ -b "/dev/mapper/$name" ] || { status "$dev" "failed: no /dev/mapper/$name"; return 1; }
    TARGET=/dev/mapper/$name
}
setup_ramdisk1() { setup_ramdisk_n ramdisk1 1; }
setup_ramdisk2() { setup_ramdisk_n ramdisk2 2; }
teardown_ramdisk1() { stop_daemons TERM; }
teardown_ramdisk2() { stop_daemons TERM; }

# The 2020 cover letter's measure: a file on ext4 on dm-user, against a file on
# tmpfs. tmpfs takes no O_DIRECT on 6.1, so that one runs buffered.
setup_ext4() {
    setup_ramdisk_n ext4 2 || return 1
    local dev=$TARGET
    TARGET=""
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dev" >/dev/null 2>&1 || {
        status ext4 "failed: mkfs.ext4"
        return 1
    }
    modprobe ext4 2>/dev/null
    mkdir -p "$WORK/ext4"
    mount -t ext4 "$dev" "$WORK/ext4" || return 1
    # fio lays the file out itself; leave room for the filesystem's metadata.
    SIZE_MB_SAVED=$SIZE_MB
    SIZE_MB=$((SIZE_MB * 3 / 4))
    TARGET=$WORK/ext4/fio.dat
}
teardown_ext4() {
    SIZE_MB=${SIZE_MB_SAVED:-$SIZE_MB}
    umount "$WORK/ext4"
    stop_daemons TERM
}

setup_tmpfs() {
    mkdir -p "$WORK/tmpfs"
    mount -t tmpfs -o size=$((SIZE_MB + 64))m tmpfs "$WORK/tmpfs" || return 1
    SIZE_MB_SAVED=$SIZE_MB
    SIZE_MB=$((SIZE_MB * 3 / 4))
    if dd if=/dev/zero of="$WORK/tmpfs/probe" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
        DIRECT=1
    else
        DIRECT=0
        echo "buffered: tmpfs takes no O_DIRECT" >"$OUT/tmpfs/note"
    fi
    rm -f "$WORK/tmpfs/probe"
    TARGET=$WORK/tmpfs/fio.dat
}
teardown_tmpfs() {
    SIZE_MB=${SIZE_MB_SAVED:-$SIZE_MB}
    umount "$WORK/tmpfs"
}

# --- Ceph RBD: one cluster, one image, three clients in turn -------------------
# The cluster (tests/vm/ceph-lib.bash: mon and OSD on 127.0.0.1, bluestore on a brd
# ramdisk) starts with the first of krbd, rbdnbd and dmrbd, and serves the rest of
# the boot. The same image serves all three, mapped by one at a time, filled once
# (by the first) before its reads.
CEPH_IMAGE=bench
CEPH_STATE=""     # "ok" once the cluster and the image are up, else why not
CEPH_FILLED=0
CEPH_PREFILL_S=150
export CEPH_CONF=/tmp/ceph/ceph.conf

# bounded SECS OUTFILE CMD...: run CMD with its stdout to OUTFILE; give up after
# SECS (a map stuck in the kernel cannot be killed: it is left behind).
bounded() {
    local secs=$1 out=$2 pid t
    shift 2
    "$@" >"$out" &
    pid=$!
    for ((t = 0; t < secs * 10; t++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid"; return; }
        nap 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    echo "bounded: '$*' still running after $secs s" >&2
    return 124
}

# ceph_use DEVICE: the cluster up (started now if it is not yet) and the device
# measured at CEPH_SIZE_MB; 1, with the reason as DEVICE's status, if it cannot be.
ceph_use() {
    local dev=$1 t=$SECONDS
    if [ -z "$CEPH_STATE" ]; then
        if ! command -v ceph-mon >/dev/null || ! command -v ceph-osd >/dev/null ||
            ! command -v rbd >/dev/null; then
            CEPH_STATE="not available: ceph-mon, ceph-osd or rbd not installed"
        elif [ ! -x "$BUILD/tests/rados-mon-command" ]; then
            CEPH_STATE="not built: tests/rados-mon-command (librados-dev)"
        else
            log_console "ceph: starting a one-node cluster (a minute or two under TCG)"
            # A subshell: the test library's fail() exits, and ends only that.
            if (
                export VMT_BUILD=$BUILD
                # shellcheck source=/dev/null
                source "$REPO/tests/vm/lib.sh"
                # shellcheck source=/dev/null
                source "$REPO/tests/vm/ceph-lib.bash"
                ceph_cluster_start && ceph_image_create "$CEPH_IMAGE" "${CEPH_SIZE_MB}M"
            ) >"$OUT/$dev/ceph.log" 2>&1; then
                CEPH_STATE=ok
                read -r OSD_PID 2>/dev/null </tmp/ceph/run/ceph-osd.0.pid
                log_console "ceph: cluster up, rbd/$CEPH_IMAGE (${CEPH_SIZE_MB} MiB) ready in $((SECONDS - t)) s"
                echo "$((SECONDS - t))" >"$OUT/$dev/ceph-start-s"
            else
                CEPH_STATE="failed: the Ceph cluster did not start ($(tail -n 1 "$OUT/$dev/ceph.log"))"
            fi
        fi
    fi
    [ "$CEPH_STATE" = ok ] || { status "$dev" "$CEPH_STATE"; return 1; }
    SIZE_MB_SAVED=$SIZE_MB
    SIZE_MB=$CEPH_SIZE_MB
    # Filled once, by whichever client comes first.
    if [ "$CEPH_FILLED" = 1 ]; then
        SKIP_PREFILL=1
        echo "the RBD image was filled once, through the first client measured" >"$OUT/$dev/note"
    else
        CEPH_FILLED=1
        PREFILL_LIMIT=$CEPH_PREFILL_S
    fi
}
ceph_done() { SIZE_MB=${SIZE_MB_SAVED:-$SIZE_MB}; }

# krbd: the kernel's RBD client. Without udev in the guest, map and unmap need
# -o noudev (else they wait for udev forever).
KRBD_DEV=""
setup_krbd() {
    command -v rbd >/dev/null || { status krbd "not available: rbd (ceph-common) not installed"; return 1; }
    ceph_use krbd || return 1
    modprobe rbd || { status krbd "failed: cannot load the rbd module"; return 1; }
    bounded 120 "$WORK/krbd.dev" rbd device map -o noudev "rbd/$CEPH_IMAGE" ||
        { status krbd "failed: rbd device map"; return 1; }
    read -r KRBD_DEV <"$WORK/krbd.dev"
    [ -b "$KRBD_DEV" ] || { status krbd "failed: rbd device map printed '$KRBD_DEV'"; return 1; }
    TARGET=$KRBD_DEV
}
teardown_krbd() {
    [ -n "$KRBD_DEV" ] && bounded 60 /dev/null rbd device unmap -o noudev "$KRBD_DEV"
    KRBD_DEV=""
    ceph_done
}

# rbd-nbd: Ceph's own userspace block device, librbd behind the kernel's NBD
# client. It forks a daemon that serves /dev/nbdN; netlink (which needs no
# udev) first, the ioctl interface if that fails.
RBDNBD_DEV=""
setup_rbdnbd() {
    command -v rbd-nbd >/dev/null || { status rbdnbd "not available: rbd-nbd not installed"; return 1; }
    ceph_use rbdnbd || return 1
    modprobe nbd nbds_max=4 || { status rbdnbd "failed: cannot load the nbd module"; return 1; }
    if ! bounded 120 "$WORK/rbdnbd.dev" rbd-nbd map --try-netlink "rbd/$CEPH_IMAGE"; then
        bounded 120 "$WORK/rbdnbd.dev" rbd-nbd map "rbd/$CEPH_IMAGE" ||
            { status rbdnbd "failed: rbd-nbd map"; return 1; }
    fi
    read -r RBDNBD_DEV <"$WORK/rbdnbd.dev"
    [ -b "$RBDNBD_DEV" ] || { status rbdnbd "failed: rbd-nbd map printed '$RBDNBD_DEV'"; return 1; }
    TARGET=$RBDNBD_DEV
}
teardown_rbdnbd() {
    [ -n "$RBDNBD_DEV" ] && bounded 60 /dev/null rbd-nbd unmap "$RBDNBD_DEV"
    RBDNBD_DEV=""
    # rbd-nbd's daemon closes the image as it exits: wait for it before the next client.
    local p c
    for _ in {1..50}; do
        c=""
        for p in /proc/[0-9]*/comm; do
            read -r c 2>/dev/null <"$p" && [ "$c" = rbd-nbd ] && break
            c=""
        done
        [ -z "$c" ] && break
        nap 0.2
    done
    rmmod nbd
    ceph_done
}

# dmuser-rbd: librbd's asynchronous API behind dm-user, two server threads on
# one image handle.
setup_dmrbd() {
    dm_user_loaded || { status dmrbd "failed: no dm-user module loaded"; return 1; }
    local bin
    bin=$(find_bin dmuser-rbd) || { status dmrbd "not built"; return 1; }
    ceph_use dmrbd || return 1
    start_daemon dmrbd "$bin" --name bench-rbd --conf "$CEPH_CONF" --threads 2 "rbd/$CEPH_IMAGE" ||
        { status dmrbd "failed: dmuser-rbd exited ($(tail -n 1 "$OUT/dmrbd/daemon.log"))"; return 1; }
    wait_serving dmrbd bench-rbd 60
}
teardown_dmrbd() {
    stop_daemons TERM
    ceph_done
}

# fio's rbd engine: librbd straight from fio, no block device and no daemon: what
# Ceph itself costs, to tell dmuser-rbd's share from the cluster's. Put it after one
# of the three above: it does not fill the image itself.
setup_fiorbd() {
    ceph_use fiorbd || return 1
    [ "$SKIP_PREFILL" = 1 ] ||
        echo "the RBD image was not filled: reads partly hit never-written objects" >"$OUT/fiorbd/note"
    TARGET=rbd:rbd/$CEPH_IMAGE
}
teardown_fiorbd() { ceph_done; }

# --- perf, where it works -------------------------------------------------------
# profile DEVICE TARGET: a system-wide cpu-clock profile of each figure in
# PROFILE_FIGURES, the top symbols as text. perf runs fio itself, so the
# profile covers the I/O however long perf takes to start over 9p.
profile() {
    local dev=$1 target=$2 want fig name args
    command -v perf >/dev/null || { echo "perf not installed" >"$OUT/$dev/profile.txt"; return; }
    for want in $PROFILE_FIGURES; do
        for fig in "${FIGURES[@]}"; do
            name=${fig%%|*}
            args=${fig#*|}
            [ "$name" = "$want" ] || continue
            # shellcheck disable=SC2086
            timeout $((RUNTIME * 4 + 120)) perf record -q -a -g -e cpu-clock -o "$WORK/perf.data" -- \
                "${FIO[@]}" --name=prof --filename="$target" --size="${SIZE_MB}m" \
                --ioengine=io_uring --direct="$DIRECT" $args \
                --time_based --runtime="$RUNTIME" --norandommap --randrepeat=0 \
                --output-format=terse >"$OUT/$dev/perf-$name.fio" 2>"$OUT/$dev/perf-$name.err"
            {
                echo "## $dev $name: perf cpu-clock, whole guest, self time"
                timeout 300 perf report -i "$WORK/perf.data" --stdio --no-children --sort comm,dso,sym \
                    --percent-limit 0.7 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -50
                echo "## $dev $name: by command"
                timeout 300 perf report -i "$WORK/perf.data" --stdio --no-children --sort comm \
                    -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
            } >>"$OUT/$dev/profile.txt"
            rm -f "$WORK/perf.data"
        done
    done
    log "$dev: profile taken"
}

# send_results DEVICE: the device's folder and meta.txt, out through the console.
send_results() {
    echo "==BENCH-TAR-BEGIN== $1"
    tar -C "$OUT" -czf - meta.txt "$1" | base64 -w 76
    echo "==BENCH-TAR-END=="
}

# --- the run ------------------------------------------------------------------
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel=$(uname -r)"
    echo "guest_cpus=$(nproc)"
    echo "guest_mem_mb=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)"
    echo "guest_cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "fio=$(fio --version)"
    echo "size_mb=$SIZE_MB"
    echo "runtime_s=$RUNTIME"
    echo "ramp_s=$RAMP"
    echo "dm_user=$(dmsetup targets 2>/dev/null | awk '$1 == "user" { print $2 }')"
    echo "devices=$DEVICES"
    echo "ceph_size_mb=$CEPH_SIZE_MB"
} >"$OUT/meta.txt"
log "fio suite: ${#DEVLIST[@]} devices x ${#FIGURES[@]} figures, ${RUNTIME}s + ${RAMP}s ramp each, ${SIZE_MB} MiB"

for dev in "${DEVLIST[@]}"; do
    mkdir -p "$OUT/$dev"
    DIRECT=1
    DAEMON_PIDS=""
    if ! declare -F "setup_$dev" >/dev/null; then
        status "$dev" "failed: unknown device"
        skip_figures
        continue
    fi
    TARGET=""
    SKIP_PREFILL=0
    PREFILL_LIMIT=""
    "setup_$dev" >>"$OUT/$dev/setup.log" 2>&1
    rc=$?
    target=$TARGET
    if [ $rc -ne 0 ] || [ -z "$target" ]; then
        [ -f "$OUT/$dev/status" ] || status "$dev" "failed: setup ($(tail -n 1 "$OUT/$dev/setup.log" 2>/dev/null))"
        log "$dev: $(cat "$OUT/$dev/status")"
        "teardown_$dev" >/dev/null 2>&1
        skip_figures
        send_results "$dev"
        continue
    fi
    log "$dev: $target${DAEMON_PIDS:+ (daemon pids $DAEMON_PIDS)}"
    case $target in
        /dev/*) [ "$SKIP_PREFILL" = 1 ] || prefill "$dev" "$target" ;;
    esac
    echo "$target" >"$OUT/$dev/target"
    echo "$DIRECT" >"$OUT/$dev/direct"
    run_fio "$dev" "$target" "$DIRECT"
    if [ -n "$DAEMON_PIDS" ]; then
        echo "idle $(iou_wrk_count)" >"$OUT/$dev/iouwrk-idle"
    fi
    if [ "$PROFILE" = 1 ] && [[ " $PROFILE_DEVICES " == *" $dev "* ]]; then
        profile "$dev" "$target"
    fi
    status "$dev" ok
    "teardown_$dev" >>"$OUT/$dev/setup.log" 2>&1
    send_results "$dev"
done
log "fio suite done"
