#!/bin/bash
# The target destroyed under its daemons: dmsetup remove while they sit in
# read(), with I/O in flight, and with a control file kept open afterwards.
# After each, the guest must still serve the next device (fio verify).
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/module-lib.bash"

# dmsetup remove while daemons sit in read() (blocking threads) and in
# io_uring reads (poll): all get ENOTBLK and exit 0 at once.
t_remove_while_reading() {
    dm_user_create rr 8192 rr-ctl || fail "create"
    serve blk rr-ctl --threads 4
    serve uring rr-ctl --uring 32
    wait_for 10 bash -c "dmsetup status rr | grep -Eq ' channels=5( |$)'" || fail "channels: $(dmsetup status rr)"
    # Every thread of both is asleep: the workers in read() and io_uring_enter().
    wait_for 30 all_asleep "$(daemon_pid blk)" "$(daemon_pid uring)" ||
        fail "the daemons never all went to sleep in read: $(grep -h State /proc/"$(daemon_pid blk)"/task/*/status)"
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
    fio_load ri
    local fio=$FIO_PID
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

mtest survive-remove-while-daemons-read t_remove_while_reading 180
mtest survive-file-outlives-target t_file_outlives_target 180
mtest survive-remove-with-io-in-flight t_remove_inflight 240
vm_tests_run
