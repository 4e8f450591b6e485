# Helpers shared by the module's VM tests (tests/vm/module-*.sh); sourced
# after tests/vm/lib.sh. The probe is tests/module-probe.c.
PROBE=$VMT_BUILD/tests/module-probe

# mtest NAME FUNC SECS: register a test unless MODULE_TESTS (a glob) leaves it out.
mtest() {
    # shellcheck disable=SC2053
    [[ "$1" == ${MODULE_TESTS:-*} ]] && vm_test "$@"
}

# serve NAME CTL [serve options...]: start the probe's daemon as NAME (stopped
# after the test); wait until its channels are open.
serve() { serve_with "$PROBE" "$@"; }

# serve_with PROGRAM NAME CTL [options...]: the same for PROGRAM's serve
# command (module-probe, module-waiters), which prints "ready".
serve_with() {
    local prog=$1 name=$2 ctl=$3
    shift 3
    need_cmd "$prog"
    rm -f "/tmp/$name.out"
    "$prog" serve "$ctl" "$@" >"/tmp/$name.out" 2>&1 &
    VMT_DAEMON_PID[$name]=$!
    echo "$! $name" >>"$VMT_DAEMONS_FILE"
    wait_for 10 grep -q ready "/tmp/$name.out" || fail "daemon $name did not start: $(cat "/tmp/$name.out")"
}

# stats NAME KEY: a counter the stopped daemon NAME wrote to /tmp/NAME.stats.
stats() { grep -o "\b$2=[0-9]*" "/tmp/$1.stats" | cut -d= -f2; }

# probe_run NAME CASE [TABLE-OPTIONS...]: run tests/module-probe.c's case CASE on
# a fresh device NAME (control NAME-ctl); the caller inspects and removes it.
probe_run() {
    local name=$1 case=$2
    shift 2
    need_cmd "$PROBE"
    dm_user_create "$name" 8192 "$name-ctl" "$@" || fail "cannot create the device"
    timeout $((240 * VMT_TIME_SCALE)) "$PROBE" case "$case" "/dev/mapper/$name" "$name-ctl" || fail "probe case $case failed"
}

# fio_load NAME: a minute of 16 KiB random reads and writes at QD16 on /dev/mapper/NAME,
# in the background (output in /tmp/fio.out); its pid in FIO_PID. Tests end it sooner.
fio_load() {
    fio --name="$1" --filename="/dev/mapper/$1" --rw=randrw --bs=16k --iodepth=16 \
        --ioengine=libaio --direct=1 --time_based --runtime=60 --size=32M \
        >/tmp/fio.out 2>&1 &
    FIO_PID=$!
}

# all_asleep PID...: no thread of these processes is running or runnable
# (each sleeps in a system call: read, io_uring_enter, sigwait...).
all_asleep() {
    local pid st
    for pid in "$@"; do
        [ -d "/proc/$pid/task" ] || return 1
        for st in /proc/"$pid"/task/*/stat; do
            # The state follows the ") " that ends the command name.
            [[ "$(cat "$st" 2>/dev/null)" =~ \)\ ([A-Za-z]) ]] || continue
            [ "${BASH_REMATCH[1]}" = R ] && return 1
        done
    done
    return 0
}

# idle NAME: nothing queued or in flight on device NAME.
idle() { dmsetup status "$1" | grep -q ' queued=0 inflight_read=0 inflight_write=0 inflight_other=0 '; }

# next_device_works: a fresh device with a fresh daemon passes fio verify.
next_device_works() {
    dm_user_create next 32768 next-ctl || fail "the next device cannot be created"
    serve next next-ctl --threads 2
    fio_verify /dev/mapper/next --size=4M --iodepth=8 || fail "the next device does not serve I/O"
    daemon_stop next
    dm_user_remove next || fail "the next device cannot be removed"
}
