#!/bin/bash
# The module survives what daemons and admins do to it: a daemon SIGKILLed
# mid-I/O, dmsetup remove while daemons sit in read(), remove while I/O is in
# flight, no daemon at all, rmmod. After each, the guest must still serve the
# next device: every test ends by serving a fresh one (fio verify).
source "$DEV_ROOT/tests/vm/lib.sh"
PROBE=$VMT_BUILD/tests/module-probe

mtest() {
    # shellcheck disable=SC2053
    [[ "$1" == ${MODULE_TESTS:-*} ]] && vm_test "$@"
}

serve() {
    local name=$1 ctl=$2
    shift 2
    need_cmd "$PROBE"
    rm -f "/tmp/$name.out"
    "$PROBE" serve "$ctl" "$@" >"/tmp/$name.out" 2>&1 &
    VMT_DAEMON_PID[$name]=$!
    echo "$! $name" >>"$VMT_DAEMONS_FILE"
    wait_for 10 grep -q ready "/tmp/$name.out" || fail "daemon $name did not start: $(cat "/tmp/$name.out")"
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

# A daemon SIGKILLed while fio runs: what it held fails with EIO at once,
# what was queued fails after the daemon timeout; fio ends, nothing stays
# queued or in flight; a new daemon on the same device serves again.
t_daemon_sigkill() {
    need_cmd fio
    echo 2000 >/sys/module/dm_user/parameters/dm_user_daemon_timeout_msec
    dm_user_create sk 65536 sk-ctl || fail "create"
    serve d1 sk-ctl --uring 8 --delay-us 20000
    fio --name=sk --filename=/dev/mapper/sk --rw=randrw --bs=16k --iodepth=16 \
        --ioengine=libaio --direct=1 --time_based --runtime=60 --size=32M \
        >/tmp/fio.out 2>&1 &
    local fio=$!
    wait_for 20 bash -c "dmsetup status sk | grep -Eq 'completed=[0-9]{2,}'" || fail "no I/O served"
    dmsetup status sk
    kill -KILL "$(daemon_pid d1)"
    local start=$SECONDS
    wait "$fio" && fail "fio succeeded although its daemon died"
    echo "fio ended $((SECONDS - start)) s after the kill: $(grep -m1 -o 'err=[ 0-9]*.*' /tmp/fio.out)"
    [ $((SECONDS - start)) -lt 30 ] || fail "fio took $((SECONDS - start)) s to fail"
    wait_for 10 idle sk || fail "requests left: $(dmsetup status sk)"
    dmsetup status sk
    dmsetup status sk | grep -q ' errors=0 ' && fail "no request failed"
    serve d2 sk-ctl --threads 2
    fio_verify /dev/mapper/sk --size=4M || fail "a new daemon cannot serve the device"
    daemon_stop d2
    dm_user_remove sk || fail "remove"
    echo 4000 >/sys/module/dm_user/parameters/dm_user_daemon_timeout_msec
    next_device_works
}

# dmsetup remove while daemons sit in read() (blocking threads) and in
# io_uring reads (poll): all get ENOTBLK and exit 0 at once.
t_remove_while_reading() {
    dm_user_create rr 8192 rr-ctl || fail "create"
    serve blk rr-ctl --threads 4
    serve uring rr-ctl --uring 32
    wait_for 10 bash -c "dmsetup status rr | grep -q ' channels=5$'" || fail "channels: $(dmsetup status rr)"
    sleep 0.5
    dm_user_remove rr || fail "remove refused"
    daemon_wait blk 10 || fail "blocking daemon did not exit 0 after remove (status $?)"
    daemon_wait uring 10 || fail "io_uring daemon did not exit 0 after remove (status $?)"
    grep -q 'target gone' /tmp/blk.out || fail "blocking daemon did not see ENOTBLK"
    [ ! -e /dev/dm-user/rr-ctl ] || fail "control device still there"
    next_device_works
}

# A channel kept open after the target is gone stays safe: read gives
# ENOTBLK, write an error, poll says readable; closing it later is fine.
t_file_outlives_target() {
    dm_user_create ol 8192 ol-ctl || fail "create"
    exec 7<>/dev/dm-user/ol-ctl || fail "open"
    dm_user_remove ol || fail "remove refused"
    local out
    out=$(dd bs=4096 count=1 <&7 2>&1 >/dev/null) && fail "read after remove succeeded"
    echo "read: $out"
    grep -q 'Block device required' <<<"$out" || fail "read after remove: '$out', wanted ENOTBLK"
    head -c 40 /dev/zero >&7 2>/dev/null && fail "write after remove succeeded"
    exec 7>&-
    next_device_works
}

# Remove while I/O is in flight: dmsetup remove --force swaps in an error
# table, which waits for what the daemon holds; the daemon answers, the
# old target is destroyed under it, and it exits on ENOTBLK.
t_remove_inflight() {
    need_cmd fio
    dm_user_create ri 65536 ri-ctl || fail "create"
    serve d ri-ctl --uring 8 --delay-us 5000
    fio --name=ri --filename=/dev/mapper/ri --rw=randrw --bs=16k --iodepth=16 \
        --ioengine=libaio --direct=1 --time_based --runtime=60 --size=32M \
        >/tmp/fio.out 2>&1 &
    local fio=$!
    wait_for 60 bash -c "dmsetup status ri | grep -Eq 'inflight_(read|write)=[1-9]'" ||
        fail "no I/O in flight: $(dmsetup status ri); fio: $(tail -n 3 /tmp/fio.out)"
    dmsetup status ri
    run_bounded 60 dmsetup remove --force ri
    echo "dmsetup remove --force: $?"
    wait "$fio" && fail "fio succeeded on a removed device"
    daemon_wait d 20 || fail "daemon did not exit 0 (status $?)"
    dm_user_remove ri || fail "device still there"
    next_device_works
}

# No daemon: a read waits, then fails after dm_user_daemon_timeout_msec; a
# daemon that attaches later takes over what is still queued.
t_no_daemon_timeout() {
    dm_user_create nd 8192 nd-ctl || fail "create"
    echo 1500 >/sys/module/dm_user/parameters/dm_user_daemon_timeout_msec
    local start=$SECONDS
    dd if=/dev/mapper/nd of=/dev/null bs=4k count=1 iflag=direct 2>/tmp/dd.err &&
        fail "read with no daemon succeeded"
    local took=$((SECONDS - start))
    echo "failed after ${took} s: $(tail -n1 /tmp/dd.err)"
    [ "$took" -ge 1 ] && [ "$took" -le 15 ] || fail "timeout took $took s, wanted about 1.5"
    echo 20000 >/sys/module/dm_user/parameters/dm_user_daemon_timeout_msec
    dd if=/dev/mapper/nd of=/dev/null bs=4k count=1 iflag=direct 2>/tmp/dd.err &
    local dd=$!
    sleep 2
    dmsetup status nd | grep -q ' queued=1 ' || fail "read not queued: $(dmsetup status nd)"
    serve late nd-ctl
    wait "$dd" || fail "the late daemon did not take the queued read: $(cat /tmp/dd.err)"
    echo 4000 >/sys/module/dm_user/parameters/dm_user_daemon_timeout_msec
    daemon_stop late
    dm_user_remove nd || fail "remove"
    next_device_works
}

# rmmod is refused while a target exists (and while a control file is open),
# and works once they are gone; the module then loads again and serves.
t_rmmod() {
    # ./dev vm's guest side loaded it from the job share.
    local ko=${VM_MODULE:-/run/vmjob/dm-user.ko}
    [ -f "$ko" ] || fail "no module file to reload ($ko)"
    dm_user_create rm 8192 rm-ctl || fail "create"
    rmmod dm_user 2>/dev/null && fail "rmmod worked with a target"
    [ -d /sys/module/dm_user ] || fail "module gone"
    exec 7<>/dev/dm-user/rm-ctl || fail "open"
    dm_user_remove rm || fail "remove"
    rmmod dm_user 2>/dev/null && fail "rmmod worked with a control file open"
    exec 7>&-
    rmmod dm_user || fail "rmmod refused after the target was removed"
    insmod "$ko" || fail "insmod again"
    next_device_works
}

mtest survive-daemon-sigkill-mid-io t_daemon_sigkill 240
mtest survive-remove-while-daemons-read t_remove_while_reading 180
mtest survive-file-outlives-target t_file_outlives_target 180
mtest survive-remove-with-io-in-flight t_remove_inflight 240
mtest survive-no-daemon-timeout t_no_daemon_timeout 180
mtest survive-rmmod t_rmmod 180
vm_tests_run
