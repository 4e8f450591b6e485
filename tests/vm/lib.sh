# Guest-side helpers for VM tests and ./dev vm commands: `source tests/vm/lib.sh`.
# Runs inside the VM only (bash, as root). Functions are listed in
# tests/vm/README.md; a test file's shape:
#
#     source "$DEV_ROOT/tests/vm/lib.sh"
#     t_ext4() { ...; [ ok ] || fail "why"; }
#     vm_test ext4-round-trip t_ext4 [TIMEOUT_SECS]
#     vm_tests_run
#
# Results go to $VMT_OUT/results (the host reads them back from the job share,
# so a crash cannot lose the ones already written), progress to the console.

DEV_ROOT=${DEV_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
VM_KVER=${VM_KVER:-$(uname -r)}
# Where results and per-test logs go: the job share under ./dev vm.
if [ -z "${VMT_OUT:-}" ]; then
    if [ -d /run/vmjob ] && [ -w /run/vmjob ]; then VMT_OUT=/run/vmjob; else VMT_OUT=/tmp/vmtest; fi
fi
# Kernel log lines that fail a test (the host's list: scripts/dev/kernel-log-bad.txt).
VMT_DMESG_BAD_RE=$(grep -Ev '^(#|$)' "$DEV_ROOT/scripts/dev/kernel-log-bad.txt" | paste -sd'|')
# Where the meson build lives (legacy-daemon, examples): ./dev test builds build/.
VMT_BUILD=${VMT_BUILD:-$DEV_ROOT/build}

# ---- modules ---------------------------------------------------------------

# vm_modload NAME...: load kernel modules and what they depend on with insmod
# of the real .ko from /lib/modules (no working autoload in the VM).
# Already loaded or built-in modules are skipped.
vm_modload() {
    local f name tmp rc
    while read -r f; do
        if [[ "$f" == MISSING\ * ]]; then
            name=${f#MISSING }
            [ -d "/sys/module/$name" ] && continue
            grep -Eq "/${name//_/[-_]}\.ko" "/lib/modules/$VM_KVER/modules.builtin" && continue
            echo "vm_modload: no module $name for $VM_KVER" >&2
            return 1
        fi
        name=${f##*/}
        name=${name%%.ko*}
        name=${name//-/_}
        [ -d "/sys/module/$name" ] && continue
        case "$f" in
            *.ko) insmod "/lib/modules/$VM_KVER/$f" ;;
            *)
                tmp=$(mktemp /tmp/mod.XXXXXX.ko)
                case "$f" in
                    *.xz) xz -dc "/lib/modules/$VM_KVER/$f" >"$tmp" ;;
                    *.zst) zstd -qdc "/lib/modules/$VM_KVER/$f" >"$tmp" ;;
                    *.gz) gzip -dc "/lib/modules/$VM_KVER/$f" >"$tmp" ;;
                esac && insmod "$tmp"
                rc=$?
                rm -f "$tmp"
                [ $rc -eq 0 ]
                ;;
        esac || {
            echo "vm_modload: insmod $f failed" >&2
            return 1
        }
    done < <(awk -v want="$*" -f "$DEV_ROOT/scripts/dev/modules-closure.awk" \
        "/lib/modules/$VM_KVER/modules.dep")
}

# ---- small utilities -------------------------------------------------------

# fail REASON...: end the current test as failed with a one-line reason.
fail() {
    echo "FAIL: $*" >&2
    if [ -n "${VMT_REASON_FILE:-}" ]; then echo "$*" >"$VMT_REASON_FILE"; fi
    exit 1
}

# need_cmd CMD...: fail unless each command exists (e.g. a binary not built).
need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || fail "missing $c (not built or not installed)"
    done
}

# VMT_TIME_SCALE (from the host: 4 on the debug kernel) stretches every
# time limit below, and each test's.
VMT_TIME_SCALE=${VMT_TIME_SCALE:-1}

# wait_for SECS CMD...: poll CMD every 0.1 s until it succeeds; 1 on timeout
# (after SECS times VMT_TIME_SCALE).
wait_for() {
    local deadline=$((SECONDS + $1 * VMT_TIME_SCALE))
    shift
    until "$@"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.1
    done
}

# run_bounded SECS CMD...: run CMD but give up waiting after SECS (124); a
# process stuck in the kernel cannot be killed, so it is left behind.
run_bounded() {
    local secs=$1
    shift
    "$@" &
    local pid=$!
    if wait_for "$secs" bash -c "! kill -0 $pid 2>/dev/null"; then
        wait "$pid"
        return
    fi
    kill -KILL "$pid" 2>/dev/null
    echo "run_bounded: '$*' still running after $secs s; left behind" >&2
    return 124
}

# ---- dm-user devices -------------------------------------------------------

VMT_DEVICES_FILE=/tmp/vmtest.devices

# dm_user_create NAME SECTORS [CTL [OPTION...]]: create /dev/mapper/NAME, a
# `user` target of SECTORS 512-byte sectors served through /dev/dm-user/CTL
# (CTL defaults to NAME); wait for both nodes. Removed after the test.
dm_user_create() {
    local name=$1 sectors=$2 ctl=${3:-$1}
    shift 3 2>/dev/null || shift $#
    local table="0 $sectors user 0 $sectors $ctl${*:+ $*}"
    dmsetup create "$name" --table "$table" || {
        echo "dm_user_create: dmsetup create $name --table '$table' failed" >&2
        return 1
    }
    echo "$name" >>"$VMT_DEVICES_FILE"
    # No udev in the VM: make /dev/mapper/NAME ourselves.
    dmsetup mknodes "$name" >/dev/null 2>&1
    wait_for 10 test -b "/dev/mapper/$name" || {
        echo "dm_user_create: /dev/mapper/$name did not appear" >&2
        return 1
    }
    dm_user_wait_ctl "$ctl"
}

# dm_user_wait_ctl CTL [SECS]: wait for the misc device /dev/dm-user/CTL.
dm_user_wait_ctl() {
    wait_for "${2:-10}" test -c "/dev/dm-user/$1" || {
        echo "dm_user_wait_ctl: /dev/dm-user/$1 did not appear" >&2
        return 1
    }
}

# dm_user_remove NAME: remove the device (retrying while it is briefly busy).
dm_user_remove() {
    local name=$1 i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        dmsetup remove "$name" 2>/dev/null && break
        [ -e "/dev/mapper/$name" ] || dmsetup info "$name" >/dev/null 2>&1 || break
        sleep 0.3
    done
    if dmsetup info "$name" >/dev/null 2>&1; then
        echo "dm_user_remove: $name is still there (busy?)" >&2
        return 1
    fi
    sed -i "/^$name\$/d" "$VMT_DEVICES_FILE" 2>/dev/null
    dmsetup mknodes >/dev/null 2>&1
    return 0
}

# ---- daemons ---------------------------------------------------------------

VMT_DAEMONS_FILE=/tmp/vmtest.daemons
declare -A VMT_DAEMON_PID=()

# daemon_start NAME CMD...: run CMD in the background (output to the test's
# log, prefixed "NAME| "); stopped after the test if still running.
daemon_start() {
    local name=$1
    shift
    "$@" > >(sed -u "s/^/$name| /") 2>&1 &
    VMT_DAEMON_PID[$name]=$!
    echo "$! $name" >>"$VMT_DAEMONS_FILE"
}

# daemon_pid NAME: its pid.
daemon_pid() { echo "${VMT_DAEMON_PID[$1]}"; }

# daemon_alive NAME: 0 while it runs.
daemon_alive() { kill -0 "${VMT_DAEMON_PID[$1]}" 2>/dev/null; }

# daemon_wait NAME [SECS]: wait for it to exit by itself (default 10 s);
# returns its exit status, or 124 if it is still running (it is then killed).
daemon_wait() {
    local name=$1 secs=${2:-10} pid=${VMT_DAEMON_PID[$1]}
    if ! wait_for "$secs" bash -c "! kill -0 $pid 2>/dev/null"; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 124
    fi
    wait "$pid"
}

# daemon_stop NAME [SIGNAL]: signal it (TERM) and wait; returns its status.
daemon_stop() {
    local pid=${VMT_DAEMON_PID[$1]}
    kill "-${2:-TERM}" "$pid" 2>/dev/null
    daemon_wait "$1" 10
}

# iou_workers PID: how many io_uring worker threads (iou-wrk-*) PID has now.
iou_workers() {
    local n=0 c
    for c in /proc/"$1"/task/*/comm; do
        [ -r "$c" ] || continue
        case "$(cat "$c" 2>/dev/null)" in iou-wrk-*) n=$((n + 1)) ;; esac
    done
    echo "$n"
}

# ---- workloads -------------------------------------------------------------

# fio_verify DEV [FIO-OPTION...]: write DEV with crc32c-verified random data,
# then read it all back and verify. Defaults: randwrite, bs=64k, QD1, direct
# I/O, the whole device; options override (e.g. --iodepth=32 --bs=4k).
fio_verify() {
    local dev=$1
    shift
    need_cmd fio
    fio --name=verify --filename="$dev" --rw=randwrite --bs=64k --iodepth=1 \
        --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 \
        --do_verify=1 --verify_dump=0 --randrepeat=0 --norandommap=0 \
        --output-format=terse --terse-version=3 "$@" >/tmp/fio.terse 2>/tmp/fio.err
    local rc=$?
    if [ $rc -ne 0 ]; then
        cat /tmp/fio.err >&2
        echo "fio_verify: fio exited $rc on $dev" >&2
        return 1
    fi
    # terse v3: field 3 error, 7 read bw KiB/s, 48 write bw KiB/s.
    awk -F';' '{ printf "fio %s: read %d MiB/s, write %d MiB/s, error %s\n", $3, $7 / 1024, $48 / 1024, $5 }' \
        /tmp/fio.terse
}

# ext4_roundtrip DEV [SRC]: mkfs.ext4, mount, cp -a a tree of SRC (default
# /usr/include) in, unmount, fsck -f clean, mount again and compare with the
# original. The tree is first unpacked on tmpfs: for /usr/include from
# .vm/usr-include.tar, which ./dev vm packs on the host (subdirectories over
# 16 MiB left out, so a developer's vendored headers do not change the test;
# one big read instead of thousands of slow small ones over 9p).
ext4_roundtrip() {
    local dev=$1 src=${2:-/usr/include} mnt t0=$SECONDS
    local tarball="$DEV_ROOT/.vm/usr-include.tar"
    vm_modload ext4 || return 1
    rm -rf /tmp/ext4-ref
    mkdir -p /tmp/ext4-ref
    if [ "$src" = /usr/include ] && [ -f "$tarball" ]; then
        tar -C /tmp/ext4-ref -xf "$tarball"
    else
        tar -C "$src" -cf - . | tar -C /tmp/ext4-ref -xf -
    fi || { echo "ext4_roundtrip: cannot read $src" >&2; return 1; }
    mnt=$(mktemp -d /tmp/ext4.XXXXXX)
    mkfs.ext4 -q -F "$dev" || { echo "ext4_roundtrip: mkfs.ext4 failed" >&2; return 1; }
    mount -t ext4 "$dev" "$mnt" || { echo "ext4_roundtrip: mount failed" >&2; return 1; }
    mkdir -p "$mnt/tree"
    cp -a /tmp/ext4-ref/. "$mnt/tree/" ||
        { umount "$mnt"; echo "ext4_roundtrip: cp -a onto the device failed" >&2; return 1; }
    local t1=$SECONDS
    umount "$mnt" || { echo "ext4_roundtrip: umount failed" >&2; return 1; }
    fsck.ext4 -f -n "$dev" >/tmp/fsck.log 2>&1 || {
        cat /tmp/fsck.log >&2
        echo "ext4_roundtrip: fsck -f found problems" >&2
        return 1
    }
    # Drop the page cache so the comparison reads from the device.
    echo 3 >/proc/sys/vm/drop_caches
    mount -t ext4 -o ro "$dev" "$mnt" || { echo "ext4_roundtrip: second mount failed" >&2; return 1; }
    diff -r --no-dereference /tmp/ext4-ref "$mnt/tree" >/tmp/diff.log 2>&1
    local rc=$?
    umount "$mnt"
    rmdir "$mnt"
    local size
    size=$(du -sh /tmp/ext4-ref | cut -f1)
    rm -rf /tmp/ext4-ref
    if [ $rc -ne 0 ]; then
        head -n 20 /tmp/diff.log >&2
        echo "ext4_roundtrip: contents differ after remount" >&2
        return 1
    fi
    echo "ext4 round trip: $size of $src copied in $((t1 - t0)) s; fsck clean; identical after remount ($((SECONDS - t0)) s in all)"
}

# ---- the test runner -------------------------------------------------------

VMT_NAMES=()
VMT_FUNCS=()
VMT_TIMEOUTS=()

# vm_test NAME FUNC [TIMEOUT_SECS]: register a test (default timeout 300 s).
# VMT_FILTER (a glob, e.g. VMT_FILTER='fio-*' ./dev test vm legacy-fio) keeps
# only the tests whose names match.
vm_test() {
    # shellcheck disable=SC2053
    [[ "$1" == ${VMT_FILTER:-*} ]] || return 0
    VMT_NAMES+=("$1")
    VMT_FUNCS+=("$2")
    VMT_TIMEOUTS+=("$((${3:-300} * VMT_TIME_SCALE))")
}

# Write one result line (tab separated) where the host reads it.
vmt_result() {
    local IFS=$'\t'
    echo "$*" >>"$VMT_OUT/results"
}

# Undo what a test left behind: its processes, daemons, devices.
vmt_cleanup() {
    local pid name
    if [ -f "$VMT_DAEMONS_FILE" ]; then
        while read -r pid name; do kill -KILL "$pid" 2>/dev/null; done <"$VMT_DAEMONS_FILE"
        rm -f "$VMT_DAEMONS_FILE"
    fi
    if [ -f "$VMT_DEVICES_FILE" ]; then
        while read -r name; do
            local mnt
            for mnt in $(awk -v d="/dev/mapper/$name" '$1 == d { print $2 }' /proc/mounts); do
                run_bounded 20 umount -l "$mnt"
            done
            run_bounded 20 dmsetup remove --force "$name" >/dev/null 2>&1 ||
                run_bounded 20 dmsetup remove --force "$name" >/dev/null 2>&1
        done <"$VMT_DEVICES_FILE"
        rm -f "$VMT_DEVICES_FILE"
    fi
}

# vm_tests_run: run the registered tests one by one, each in its own process
# group with a timeout, and report each. A kernel WARNING/BUG/Oops during a
# test fails it. Returns 0 when all passed.
vm_tests_run() {
    local file stem i n=${#VMT_NAMES[@]} failed=0 abort=""
    file=$(basename "$0")
    stem=${file%.sh}
    mkdir -p "$VMT_OUT/logs"
    for ((i = 0; i < n; i++)); do vmt_result plan "${VMT_NAMES[$i]}"; done
    local kmemleak=/sys/kernel/debug/kmemleak
    if [ -w "$kmemleak" ]; then
        # A kernel with kmemleak (the debug one): the file's leaks are looked
        # for when it ends. What boot leaked is not the file's: find it now
        # and forget it.
        vmt_result plan kmemleak-scan
        echo scan >"$kmemleak" && echo clear >"$kmemleak"
    fi
    set -m # each test in its own process group, so a timeout can kill it all
    for ((i = 0; i < n; i++)); do
        local name=${VMT_NAMES[$i]} func=${VMT_FUNCS[$i]} limit=${VMT_TIMEOUTS[$i]}
        local log="$VMT_OUT/logs/$name.log" start=$SECONDS reason="" rc
        if [ -n "$abort" ]; then
            vmt_result fail "$name" 0 "not run: $abort"
            echo "vmtest: FAIL $stem/$name: not run: $abort"
            failed=$((failed + 1))
            continue
        fi
        echo "vmtest: run  $stem/$name (limit ${limit} s)"
        local dmesg_before
        dmesg_before=$(dmesg | wc -l)
        export VMT_REASON_FILE=/tmp/vmtest.reason
        # The test's own log (its stdout and stderr, daemons' output too).
        export VMT_LOG=$log
        rm -f "$VMT_REASON_FILE" /tmp/vmtest.timedout
        (
            trap vmt_cleanup EXIT
            trap 'exit 143' TERM
            set -o pipefail
            "$func"
        ) </dev/null >"$log" 2>&1 &
        local pid=$!
        (
            sleep "$limit"
            touch /tmp/vmtest.timedout
            echo w >/proc/sysrq-trigger
            kill -TERM -- -"$pid" 2>/dev/null
            sleep 5
            kill -KILL -- -"$pid" 2>/dev/null
        ) >/dev/null 2>&1 &
        local watchdog=$!
        wait "$pid"
        rc=$?
        # The watchdog is a process group too: take its sleep with it.
        kill -- -"$watchdog" 2>/dev/null
        wait "$watchdog" 2>/dev/null
        local secs=$((SECONDS - start))
        if [ -e /tmp/vmtest.timedout ]; then
            reason="timed out after ${limit} s (blocked tasks in the kernel log)"
            # Wait for the group to go away; if it cannot, later tests would
            # trip over what it holds: do not run them.
            if ! wait_for 15 bash -c "! kill -0 -- -$pid 2>/dev/null"; then
                abort="$stem/$name left unkillable processes behind (stuck in the kernel?)"
            fi
        elif [ $rc -ne 0 ]; then
            if [ -s "$VMT_REASON_FILE" ]; then
                reason=$(head -n1 "$VMT_REASON_FILE")
            else
                reason="exit status $rc; last output: $(grep -v '^[[:space:]]*$' "$log" | tail -n1 | cut -c1-160)"
            fi
        fi
        # Leftovers from a killed test (its own trap did not run).
        vmt_cleanup
        local bad
        bad=$(dmesg | tail -n +"$((dmesg_before + 1))" | grep -E "$VMT_DMESG_BAD_RE" | head -n1)
        if [ -n "$bad" ]; then
            reason="kernel log: ${bad}${reason:+ (and: $reason)}"
            { echo "---- kernel log during the test ----"; dmesg | tail -n +"$((dmesg_before + 1))"; } >>"$log"
        fi
        if [ -z "$reason" ]; then
            vmt_result ok "$name" "$secs"
            echo "vmtest: ok   $stem/$name ($secs s)"
        else
            vmt_result fail "$name" "$secs" "$reason"
            echo "vmtest: FAIL $stem/$name ($secs s): $reason"
            failed=$((failed + 1))
        fi
    done
    set +m
    if [ -w "$kmemleak" ]; then
        vmt_kmemleak_scan "$stem" "$kmemleak" || failed=$((failed + 1))
    fi
    vmt_result "done" "$stem"
    [ $failed -eq 0 ]
}

# vmt_kmemleak_scan STEM FILE: scan for leaks now and report them as the
# file's test "kmemleak-scan" (the full report in its log). kmemleak leaves
# out objects younger than 5 s: those cannot be told from live ones yet.
vmt_kmemleak_scan() {
    local stem=$1 kmemleak=$2 start=$SECONDS log="$VMT_OUT/logs/kmemleak-scan.log" n first
    echo "vmtest: run  $stem/kmemleak-scan"
    echo scan >"$kmemleak"
    cat "$kmemleak" >"$log"
    n=$(grep -c '^unreferenced object' "$log")
    if [ "$n" -eq 0 ]; then
        vmt_result ok kmemleak-scan "$((SECONDS - start))"
        echo "vmtest: ok   $stem/kmemleak-scan ($((SECONDS - start)) s)"
        return 0
    fi
    # The first leak's allocation site: the first frame past kmalloc & co.
    first=$(awk '/backtrace:/ { bt = 1; next } bt && !/kmem_cache|kmalloc|__kmem|slab_post|kmemleak/ { print $2; exit }' "$log")
    vmt_result fail kmemleak-scan "$((SECONDS - start))" \
        "kmemleak: $n unreferenced object(s), the first allocated in ${first:-?}"
    echo "vmtest: FAIL $stem/kmemleak-scan: $n unreferenced object(s), the first allocated in ${first:-?}"
    return 1
}
