#!/bin/bash
# Every kind of waiter on one target at once (tests/module-waiters.c: aio
# IOCB_CMD_POLL, epoll EPOLLONESHOT / EPOLLEXCLUSIVE / EPOLLET, io_uring poll,
# select, a blocking read) under fio randrw. A wake function that frees its
# entry (aio's) must not be touched after it ran, and no request may wait for
# a timer to reach a reader: fio's worst latency is printed (the figure the
# issue asks for), and only a request that waits for seconds (a lost
# wake-up) fails the test.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/module-lib.bash"
WAITERS=$VMT_BUILD/tests/module-waiters

# waiters NAME CTL [KIND...]: start module-waiters serve as NAME; wait for ready.
waiters() { serve_with "$WAITERS" "$@"; }

# worst_latency: the largest total (submission to completion) latency of
# /tmp/fio.terse's reads and writes, in microseconds (terse v3 fields 39, 80).
worst_latency() { awk -F';' '{ print ($39 > $80 ? $39 : $80) }' /tmp/fio.terse; }

# latency_line WHAT: IOPS, the 99th and 99.9th percentile completion latency
# of the reads, and the worst latency, from /tmp/fio.terse.
latency_line() {
    awk -F';' -v what="$1" '{
        for (i = 18; i <= 37; i++) {
            split($i, kv, "=")
            if (kv[1] == "99.000000%") p99 = kv[2]
            if (kv[1] == "99.900000%") p999 = kv[2]
        }
        w = $39 > $80 ? $39 : $80
        printf "%s: %d+%d IOPS, read clat p99 %d us, p99.9 %d us, worst (either, submission to completion) %d us\n", what, $8, $49, p99, p999, w
    }' /tmp/fio.terse
}

# brd_reference SECS [FIO-OPTION...]: the same fio on a RAM disk in this boot (a few
# seconds: its figures are a scale, not a test),
# to tell the host's scheduling delays (a loaded host, TCG) from the module's.
brd_reference() {
    local secs=$1
    shift
    vm_modload brd || return 0
    [ -b /dev/ram0 ] || { echo "brd reference: no /dev/ram0"; return 0; }
    fio --name=ref --filename=/dev/ram0 --rw=randrw --bs=4k --iodepth=16 \
        --ioengine=libaio --direct=1 --time_based --runtime="$secs" \
        --randrepeat=0 --output-format=terse --terse-version=3 "$@" >/tmp/fio.terse 2>/tmp/fio.err &&
        latency_line "brd reference, same fio"
}

# fio_randrw NAME SECS [FIO-OPTION...]: SECS of randrw on /dev/mapper/NAME;
# fails the test if fio errs or is still running long after SECS.
fio_randrw() {
    local name=$1 secs=$2
    shift 2
    run_bounded $((secs + 60)) fio --name=waiters --filename="/dev/mapper/$name" \
        --rw=randrw --bs=4k --iodepth=16 --ioengine=libaio --direct=1 \
        --time_based --runtime="$secs" --size=32M --randrepeat=0 \
        --output-format=terse --terse-version=3 "$@" >/tmp/fio.terse 2>/tmp/fio.err
    case $? in
        0) ;;
        124) fail "fio still running $((secs + 60)) s after its ${secs} s: a request was never read (lost wake-up); $(dmsetup status "$name")" ;;
        *) fail "fio failed: $(tail -n 3 /tmp/fio.err)" ;;
    esac
}

# All kinds of waiters on one target under randrw; then removal wakes every
# one of them and the daemon exits by itself.
t_all_waiters() {
    need_cmd fio
    dm_user_create wt 131072 wt-ctl || fail "create"
    waiters w wt-ctl aio oneshot excl edge uring select block
    wait_for 10 bash -c "dmsetup status wt | grep -Eq ' channels=7( |$)'" || fail "channels: $(dmsetup status wt)"
    fio_randrw wt 20
    local worst
    worst=$(worst_latency)
    latency_line "dm-user, 7 kinds of waiters, randrw 4k QD16"
    [ "$worst" -lt 5000000 ] || fail "a request took $worst us: a lost wake-up"
    idle wt || fail "requests left: $(dmsetup status wt)"
    dm_user_remove wt || fail "remove"
    daemon_wait w 10 || fail "the daemon did not exit after remove (status $?): $(cat /tmp/w.out)"
    cat /tmp/w.out
    grep -q 'target gone' /tmp/w.out || fail "the daemon did not see the target go"
    brd_reference 5
}

# The same with only one-shot and aio pollers, the entries a hand-made wake-up
# walk got wrong: each takes a wake-up and is disarmed (epoll) or freed (aio)
# until its thread re-arms it.
t_oneshot_only() {
    need_cmd fio
    dm_user_create wo 131072 wo-ctl || fail "create"
    waiters w wo-ctl aio aio oneshot oneshot uring
    fio_randrw wo 15 --iodepth=4
    local worst
    worst=$(worst_latency)
    latency_line "dm-user, aio and one-shot pollers, randrw 4k QD4"
    [ "$worst" -lt 5000000 ] || fail "a request took $worst us: a lost wake-up"
    daemon_stop w
    cat /tmp/w.out
    dm_user_remove wo || fail "remove"
}

# QD1: every request must reach a waiter at once; with nothing else queued
# behind it, a lost wake-up would stall fio for good.
t_qd1() {
    need_cmd fio
    dm_user_create wq 65536 wq-ctl || fail "create"
    waiters w wq-ctl oneshot aio uring block
    fio_randrw wq 10 --iodepth=1
    local worst
    worst=$(worst_latency)
    latency_line "dm-user, QD1"
    [ "$worst" -lt 5000000 ] || fail "a request took $worst us: a lost wake-up"
    daemon_stop w
    cat /tmp/w.out
    dm_user_remove wq || fail "remove"
    brd_reference 5 --iodepth=1
}

mtest waiters-all-kinds-under-randrw t_all_waiters 240
mtest waiters-oneshot-and-aio t_oneshot_only 240
mtest waiters-qd1 t_qd1 180
vm_tests_run
