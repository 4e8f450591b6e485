#!/bin/bash
# The module's Part 2 features (spec /work/shared/spec/dm-user-abi.md), one
# test each, driven by tests/module-probe.c.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/module-lib.bash"

probe_case() {
    probe_run p2 "$@"
    dm_user_remove p2 || fail "cannot remove the device"
}

# queue_attr NAME ATTR: /sys/block/dm-N/queue/ATTR of /dev/mapper/NAME.
queue_attr() {
    local dm
    dm=$(dmsetup info -c --noheadings -o blkdevname "$1")
    cat "/sys/block/$dm/queue/$2"
}

# 1. poll() and O_NONBLOCK reads.
t_poll_nonblock() { probe_case nonblock-poll; }

# 1. io_uring reads at QD32 wait by polling: no iou-wrk thread.
t_uring_qd32() { probe_case uring-qd32; }

# 2. One read returns one whole request; two responses go in one write.
t_whole_message() { probe_case whole-message; }

# 3. max_payload bounds every request and GET_INFO reports it.
t_max_payload() {
    need_cmd "$PROBE"
    dm_user_create p2 8192 p2-ctl 2 max_payload 65536 || fail "cannot create the device"
    [ "$(queue_attr p2 max_sectors_kb)" = 64 ] || fail "max_sectors_kb $(queue_attr p2 max_sectors_kb), wanted 64"
    PROBE_MAX_PAYLOAD=65536 "$PROBE" case info /dev/mapper/p2 p2-ctl || fail "GET_INFO"
    "$PROBE" case max-payload /dev/mapper/p2 p2-ctl || fail "a request exceeded max_payload"
    dm_user_remove p2 || fail "remove"
    # Out of range values are refused with a message.
    local lines
    lines=$(dmesg | wc -l)
    dmsetup create p2bad --table "0 8192 user 0 8192 p2bad 2 max_payload 1000" 2>/dev/null &&
        { dmsetup remove p2bad; fail "max_payload 1000 accepted"; }
    dmesg | tail -n +"$((lines + 1))" | grep -q 'max_payload must be' ||
        fail "no clear error for a bad max_payload"
    [ ! -e /dev/dm-user/p2bad ] || fail "a refused table left its control device"
    PROBE_MAX_PAYLOAD=1048576 probe_case info
}

# 4. dmsetup status counts; the table line gives the options back.
t_status() {
    probe_case status
    dm_user_create p2 8192 p2-ctl 3 no_discard max_payload 131072 || fail "create"
    local table
    table=$(dmsetup table p2)
    [ "$table" = "0 8192 user 0 8192 p2-ctl 3 no_discard max_payload 131072" ] ||
        fail "table line: '$table'"
    dmsetup status p2 | grep -Eq '^0 8192 user queued=0 inflight_read=0 inflight_write=0 inflight_other=0 completed=0 errors=0 channels=0 requeued=0 timed_out=0$' ||
        fail "status line: '$(dmsetup status p2)'"
    [ "$(dmsetup message p2 0 counters)" = "$(dmsetup status p2 | cut -d' ' -f4-)" ] ||
        fail "counters message: '$(dmsetup message p2 0 counters)'"
    dm_user_remove p2 || fail "remove"
    dm_user_create p2 8192 p2-ctl 3 no_flush request_timeout=5000 no_write_zeroes || fail "create"
    table=$(dmsetup table p2)
    [ "$table" = "0 8192 user 0 8192 p2-ctl 3 no_flush no_write_zeroes request_timeout=5000" ] ||
        fail "table line with request_timeout: '$table'"
    dm_user_remove p2 || fail "remove"
}

# 5. Hand-over: a second daemon attaches, the first is SIGKILLed mid-I/O;
# what it held goes back to the queue and fio's verify loses nothing.
t_handover() {
    need_cmd fio
    dm_user_create p2 131072 p2-ctl || fail "create"
    # d1 answers 32 writes, then holds all 8 of its io_uring reads' requests
    # and says so: it dies with exactly that much in flight, however slow
    # the machine.
    serve d1 p2-ctl --uring 8 --hold-after 32 --hold 8 --requeue --store /tmp/p2.store
    fio --name=handover --filename=/dev/mapper/p2 --rw=randwrite --bs=16k --iodepth=16 \
        --ioengine=libaio --direct=1 --size=48M --verify=crc32c --verify_fatal=1 \
        --do_verify=1 --randrepeat=0 --output-format=terse --terse-version=3 \
        >/tmp/fio.terse 2>/tmp/fio.err &
    local fio=$!
    wait_for 120 grep -q '^holding 8$' /tmp/d1.out ||
        fail "d1 never held 8 requests: $(dmsetup status p2); d1: $(tr '\n' ' ' </tmp/d1.out)"
    local held
    held=$(dmsetup status p2)
    echo "d1 holds: $held"
    [ "$(grep -o 'inflight_write=[0-9]*' <<<"$held" | cut -d= -f2)" -ge 8 ] ||
        fail "d1 says it holds 8 writes, the status line disagrees: $held"
    serve d2 p2-ctl --threads 2 --requeue --store /tmp/p2.store
    kill -KILL "$(daemon_pid d1)"
    echo "killed d1"
    wait "$fio" || { cat /tmp/fio.err; fail "fio verify failed after the hand-over"; }
    awk -F';' '{ print "fio: error", $5, "write KiB", $47 }' /tmp/fio.terse
    dmsetup status p2
    dmsetup status p2 | grep -q ' errors=0 ' || fail "requests failed: $(dmsetup status p2)"
    daemon_stop d2
    dm_user_remove p2 || fail "remove"
}

# 6. fsync, O_SYNC writes, blkdiscard, fallocate -z and blkdiscard -s reach
# the daemon as PREFLUSH, FUA, DISCARD, WRITE_ZEROES and SECURE_ERASE.
t_flush_discard_zeroes() {
    dm_user_create p2 65536 p2-ctl || fail "create"
    [ "$(queue_attr p2 write_cache)" = "write back" ] || fail "write_cache: $(queue_attr p2 write_cache)"
    [ "$(queue_attr p2 fua)" = 1 ] || fail "fua: $(queue_attr p2 fua)"
    [ "$(queue_attr p2 discard_max_bytes)" -gt 0 ] || fail "discard_max_bytes 0"
    [ "$(queue_attr p2 write_zeroes_max_bytes)" -gt 0 ] || fail "write_zeroes_max_bytes 0"
    serve fl p2-ctl --stats /tmp/fl.stats
    dd if=/dev/urandom of=/dev/mapper/p2 bs=64k count=64 conv=fsync status=none || fail "dd conv=fsync"
    dd if=/dev/urandom of=/dev/mapper/p2 bs=4k count=1 oflag=direct,sync status=none || fail "dd oflag=sync"
    blkdiscard -o 0 -l 1048576 /dev/mapper/p2 || fail "blkdiscard"
    fallocate -z -o 1048576 -l 1048576 /dev/mapper/p2 || fail "fallocate -z"
    blkdiscard -z -o 2097152 -l 1048576 /dev/mapper/p2 || fail "blkdiscard -z"
    blkdiscard -s -o 3145728 -l 1048576 /dev/mapper/p2 || fail "blkdiscard -s (secure erase)"
    # What was written, then discarded, zeroed or erased, reads back as zeros.
    cmp -n 4194304 <(dd if=/dev/mapper/p2 bs=1M count=4 iflag=direct status=none) /dev/zero ||
        fail "discarded/zeroed range does not read back as zeros"
    daemon_stop fl
    cat /tmp/fl.stats
    [ "$(stats fl preflush)" -gt 0 ] || fail "no PREFLUSH reached the daemon"
    [ "$(stats fl fua)" -gt 0 ] || fail "no FUA write reached the daemon (dd oflag=sync)"
    [ "$(stats fl secure_erase)" -gt 0 ] || fail "no SECURE_ERASE reached the daemon"
    [ "$(stats fl discard)" -gt 0 ] || fail "no DISCARD reached the daemon"
    [ "$(stats fl write_zeroes)" -ge 2 ] || fail "WRITE_ZEROES did not reach the daemon twice"
    dm_user_remove p2 || fail "remove"
}

# 6. Each table option turns its operation off.
t_options_off() {
    dm_user_create p2 65536 p2-ctl 4 no_flush no_discard no_write_zeroes no_secure_erase || fail "create"
    [ "$(queue_attr p2 write_cache)" = "write through" ] || fail "write_cache: $(queue_attr p2 write_cache)"
    [ "$(queue_attr p2 discard_max_bytes)" = 0 ] || fail "discard_max_bytes $(queue_attr p2 discard_max_bytes)"
    [ "$(queue_attr p2 write_zeroes_max_bytes)" = 0 ] || fail "write_zeroes_max_bytes not 0"
    serve off p2-ctl --stats /tmp/off.stats
    PROBE_MAX_PAYLOAD=1048576 "$PROBE" case info /dev/mapper/p2 p2-ctl | grep -q ' ops 0 ' ||
        fail "GET_INFO ops not 0"
    dd if=/dev/urandom of=/dev/mapper/p2 bs=64k count=4 conv=fsync status=none || fail "dd conv=fsync"
    blkdiscard -o 0 -l 1048576 /dev/mapper/p2 2>/dev/null && fail "blkdiscard worked with no_discard"
    # Without write-zeroes support the kernel zeroes by writing.
    blkdiscard -z -o 0 -l 65536 /dev/mapper/p2 || fail "blkdiscard -z"
    daemon_stop off
    cat /tmp/off.stats
    [ "$(stats off preflush)" = 0 ] || fail "PREFLUSH reached the daemon with no_flush"
    [ "$(stats off discard)" = 0 ] && [ "$(stats off write_zeroes)" = 0 ] || fail "disabled ops arrived"
    dm_user_remove p2 || fail "remove"
}

# 6. UNSUPPORTED answers give the caller EOPNOTSUPP: a READ (probe), and a
# WRITE_ZEROES that may not fall back to writing zeros (fallocate
# --punch-hole). (blkdiscard cannot show it: the kernel's discard helper
# swallows EOPNOTSUPP.) With fallback allowed (blkdiscard -z), the kernel
# writes the zeros itself and succeeds.
t_unsupported() {
    probe_case unsupported
    dm_user_create p2 65536 p2-ctl || fail "create"
    serve un p2-ctl --unsupported 6 --stats /tmp/un.stats
    local out
    out=$(fallocate --punch-hole -o 0 -l 65536 /dev/mapper/p2 2>&1) && fail "punch-hole succeeded"
    echo "fallocate --punch-hole: $out"
    # util-linux words EOPNOTSUPP of a KEEP_SIZE call as "keep size mode is unsupported".
    grep -Eq 'Operation not supported|keep size mode is unsupported' <<<"$out" ||
        fail "fallocate: '$out', wanted EOPNOTSUPP"
    blkdiscard -z -o 0 -l 65536 /dev/mapper/p2 || fail "blkdiscard -z did not fall back to writes"
    daemon_stop un
    cat /tmp/un.stats
    [ "$(stats un write_zeroes)" -ge 1 ] || fail "WRITE_ZEROES never reached the daemon"
    [ "$(stats un write)" -ge 1 ] || fail "the fallback wrote nothing"
    dm_user_remove p2 || fail "remove"
}

# 7. fio with io_uring on /dev/mapper/NAME runs without iou-wrk threads, and
# so does an io_uring daemon that reads with RWF_NOWAIT and waits in exclusive
# polls (module-probe's uring_read() says why a plain read is not enough on 6.1).
t_nowait_fio_uring() {
    need_cmd fio
    dm_user_create p2 131072 p2-ctl || fail "create"
    serve ur p2-ctl --uring 64 --stats /tmp/ur.stats
    fio --name=nowait --filename=/dev/mapper/p2 --rw=randrw --bs=4k --iodepth=32 \
        --ioengine=io_uring --direct=1 --time_based --runtime=6 --size=64M \
        --output-format=terse --terse-version=3 >/tmp/fio.terse 2>/tmp/fio.err &
    local fio=$! max=0 n p i
    # Sample while I/O flows, not after some guess at fio's start-up time.
    wait_for 60 bash -c "dmsetup status p2 | grep -Eq 'completed=[0-9]{3,}'" ||
        fail "fio's I/O did not start: $(dmsetup status p2)"
    for i in $(seq 1 15); do
        for p in $(pgrep -x fio); do
            n=$(iou_workers "$p")
            [ "$n" -gt "$max" ] && max=$n
        done
        sleep 0.2
    done
    wait "$fio" || { cat /tmp/fio.err; fail "fio failed"; }
    awk -F';' '{ print "fio: error", $5, "read IOPS", $8, "write IOPS", $49 }' /tmp/fio.terse
    daemon_stop ur
    cat /tmp/ur.stats
    [ "$max" = 0 ] || fail "fio ran $max iou-wrk threads"
    [ "$(stats ur iou_workers)" = 0 ] || fail "the io_uring daemon ran iou-wrk threads"
    [ "$(stats ur read)" -gt 100 ] || fail "the daemon served too few reads"
    dm_user_remove p2 || fail "remove"
}

# 8. The target's version is above Android's 1.0.0.
t_version() {
    dmsetup targets | grep -Eq '^user +v2\.0\.0$' || fail "dmsetup targets: $(dmsetup targets | grep user)"
    probe_case info
}

# 9. Queue limits: a bio of max_payload at an unaligned offset stays one
# request (dm_accept_partial_bio, not dm's aligned max_io_len split).
t_unaligned_max_payload() {
    dm_user_create p2 65536 p2-ctl || fail "create"
    serve d p2-ctl --threads 2
    local before after
    before=$(dmsetup status p2 | grep -o 'completed=[0-9]*' | cut -d= -f2)
    dd if=/dev/zero of=/dev/mapper/p2 bs=1M count=1 seek=4096 oflag=direct,seek_bytes status=none ||
        fail "unaligned 1 MiB write"
    after=$(dmsetup status p2 | grep -o 'completed=[0-9]*' | cut -d= -f2)
    echo "an unaligned 1 MiB write took $((after - before)) request(s)"
    [ $((after - before)) = 1 ] || fail "an unaligned 1 MiB write took $((after - before)) requests, wanted 1"
}

# 10. No polled I/O: nothing of ours can be polled, so the queue must not
# claim it (a polled read would sleep for half the hung-task timeout).
t_no_polled_io() {
    need_cmd fio
    dm_user_create p2 65536 p2-ctl || fail "create"
    serve d p2-ctl --threads 2
    local poll
    poll=/sys/dev/block/$(dmsetup info -c -o major,minor --noheadings --separator : p2)/queue/io_poll
    [ "$(cat "$poll")" = 0 ] || fail "io_poll is '$(cat "$poll")'"
    run_bounded 60 fio --name=hipri --filename=/dev/mapper/p2 --ioengine=pvsync2 --hipri=1 \
        --rw=randread --bs=4k --size=1M --direct=1 --number_ios=64 >/tmp/hipri.out 2>&1 ||
        fail "64 RWF_HIPRI reads did not finish: $(tail -n 3 /tmp/hipri.out)"
    dmsetup reload p2 --table "$(dmsetup table p2)" && dmsetup resume p2 || fail "reload"
    [ "$(cat "$poll")" = 0 ] || fail "io_poll after a reload: '$(cat "$poll")'"
}

# The scripted daemon of tests/conformance against the module and against the fake
# kernel in this guest: what it saw must be the same, and the same as expected.txt (the
# host's test compares the fake with that file).
t_conformance() {
    local prog=$VMT_BUILD/tests/dmuser-conformance
    need_cmd "$prog"
    run_bounded 120 "$prog" --module >/tmp/conformance-module.txt ||
        fail "the scripted daemon failed on the module"
    run_bounded 120 "$prog" --fake >/tmp/conformance-fake.txt ||
        fail "the scripted daemon failed on the fake kernel"
    diff -u /tmp/conformance-module.txt /tmp/conformance-fake.txt ||
        fail "the fake kernel differs from the module (diff above)"
    diff -u "$DEV_ROOT/tests/conformance/expected.txt" /tmp/conformance-module.txt ||
        fail "the module differs from tests/conformance/expected.txt (diff above)"
}

mtest part2-version t_version 120
mtest part2-conformance-fake-and-module t_conformance 300
mtest part2-poll-nonblock t_poll_nonblock 120
mtest part2-uring-qd32-no-workers t_uring_qd32 120
mtest part2-whole-message t_whole_message 120
mtest part2-max-payload t_max_payload 180
mtest part2-status-counters t_status 400
mtest part2-handover-requeue t_handover 300
mtest part2-flush-discard-write-zeroes t_flush_discard_zeroes 180
mtest part2-options-turn-ops-off t_options_off 180
mtest part2-unsupported-eopnotsupp t_unsupported 180
mtest part2-nowait-fio-io-uring t_nowait_fio_uring 180
mtest part2-unaligned-max-payload-one-request t_unaligned_max_payload 120
mtest part2-no-polled-io t_no_polled_io 180
vm_tests_run
