#!/bin/bash
# The module survives what daemons and admins do to it: a daemon SIGKILLed
# mid-I/O, no daemon at all, rmmod (removal: module-teardown.sh). After each,
# the guest must still serve the next device: every test ends by serving a
# fresh one (fio verify).
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/module-lib.bash"

# A daemon SIGKILLed while fio runs: what it held fails with EIO at once,
# what was queued fails after the daemon timeout; fio ends, nothing stays
# queued or in flight; a new daemon on the same device serves again.
t_daemon_sigkill() {
    need_cmd fio
    echo 2000 >/sys/module/dm_user/parameters/dm_user_daemon_timeout_msec
    dm_user_create sk 65536 sk-ctl || fail "create"
    # d1 serves 16 requests, then holds 4 and says so: it dies holding them.
    serve d1 sk-ctl --uring 8 --hold-after 16 --hold 4
    fio_load sk
    local fio=$FIO_PID
    wait_for 120 grep -q '^holding 4$' /tmp/d1.out ||
        fail "d1 never held 4 requests: $(dmsetup status sk)"
    dmsetup status sk
    kill -KILL "$(daemon_pid d1)"
    local start=$SECONDS
    wait "$fio" && fail "fio succeeded although its daemon died"
    echo "fio ended $((SECONDS - start)) s after the kill: $(grep -m1 -o 'err=[ 0-9]*.*' /tmp/fio.out)"
    [ $((SECONDS - start)) -lt $((30 * VMT_TIME_SCALE)) ] || fail "fio took $((SECONDS - start)) s to fail"
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
    [ "$took" -ge 1 ] && [ "$took" -le $((15 * VMT_TIME_SCALE)) ] || fail "timeout took $took s, wanted about 1.5"
    echo 20000 >/sys/module/dm_user/parameters/dm_user_daemon_timeout_msec
    dd if=/dev/mapper/nd of=/dev/null bs=4k count=1 iflag=direct 2>/tmp/dd.err &
    local dd=$!
    wait_for 15 bash -c "dmsetup status nd | grep -q ' queued=1 '" ||
        fail "read not queued: $(dmsetup status nd)"
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
mtest survive-no-daemon-timeout t_no_daemon_timeout 180
mtest survive-rmmod t_rmmod 180
vm_tests_run
