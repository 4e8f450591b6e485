#!/bin/bash
# The device-mapper lifecycle with daemons that do not answer: suspend
# --noflush, reload + resume and remove --force finish; dmsetup message abort
# fails what is held; a reload with the same control name keeps the daemon
# attached and fio's verify clean; 300 targets at once.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/module-lib.bash"

# hold NAME CTL N: a daemon that reads N requests and answers none of them.
hold() {
    local name=$1 ctl=$2 n=$3
    need_cmd "$PROBE"
    rm -f "/tmp/$name.out"
    "$PROBE" hold "$ctl" "$n" >"/tmp/$name.out" 2>&1 &
    VMT_DAEMON_PID[$name]=$!
    echo "$! $name" >>"$VMT_DAEMONS_FILE"
}

# holding NAME N: wait until the hold daemon NAME has read its N requests.
holding() {
    wait_for 60 grep -q "holding $2" "/tmp/$1.out" || fail "$1 did not get $2 requests: $(cat "/tmp/$1.out")"
}

# reads DEV: 16 KiB random reads at QD8 over 4 MiB of DEV in the background
# (output in /tmp/reads.out); its pid in READS_PID.
reads() {
    fio --name=reads --filename="$1" --rw=randread --bs=16k --iodepth=8 \
        --ioengine=libaio --direct=1 --size=4M >/tmp/reads.out 2>&1 &
    READS_PID=$!
}

# counter DEV KEY: a counter of DEV's status line.
counter() { dmsetup status "$1" | grep -o "\b$2=[0-9]*" | cut -d= -f2; }

# Suspend --noflush while requests wait in the queue of a channel nobody
# reads: they go back to dm core at once, and after resume a daemon serves them.
t_suspend_noflush_unread() {
    need_cmd fio
    dm_user_create sn 65536 sn-ctl || fail "create"
    exec 7<>/dev/dm-user/sn-ctl || fail "open"
    reads /dev/mapper/sn
    wait_for 30 bash -c "dmsetup status sn | grep -q 'queued=[1-9]'" || fail "nothing queued: $(dmsetup status sn)"
    run_bounded 60 dmsetup suspend --noflush sn || fail "suspend --noflush did not finish ($?)"
    dmsetup status sn
    [ "$(counter sn queued)" = 0 ] || fail "requests still queued while suspended: $(dmsetup status sn)"
    [ "$(counter sn requeued)" -ge 1 ] || fail "nothing pushed back: $(dmsetup status sn)"
    dmsetup reload sn --table "$(dmsetup table sn)" || fail "reload"
    dmsetup resume sn || fail "resume"
    serve d sn-ctl --threads 2
    wait "$READS_PID" || fail "reads failed after resume: $(tail -n 5 /tmp/reads.out)"
    exec 7>&-
    [ "$(counter sn errors)" = 0 ] || fail "requests failed: $(dmsetup status sn)"
}

# Suspend --noflush with a daemon that read a request and never answers:
# the suspend waits for it (the daemon may be working on it) until the
# administrator sets a request_timeout; then the held request is pushed back
# too, the suspend finishes, and after resume another daemon serves
# everything: fio sees no error.
t_suspend_noflush_hung() {
    need_cmd fio
    dm_user_create sh 65536 sh-ctl || fail "create"
    hold h sh-ctl 1
    reads /dev/mapper/sh
    holding h 1
    wait_for 30 bash -c "dmsetup status sh | grep -q 'queued=[1-9]'" || fail "nothing queued: $(dmsetup status sh)"
    dmsetup suspend --noflush sh &
    local suspend=$!
    # presuspend pushed the unread ones back; the held one keeps it waiting.
    wait_for 60 bash -c "dmsetup status sh | grep -q 'requeued=[1-9]'" || fail "nothing pushed back: $(dmsetup status sh)"
    kill -0 $suspend 2>/dev/null || fail "the suspend finished while a request was held"
    dmsetup message sh 0 request_timeout 500 || fail "message request_timeout"
    wait_for 120 bash -c "! kill -0 $suspend 2>/dev/null" || fail "suspend --noflush did not finish after request_timeout"
    wait $suspend || fail "suspend --noflush failed ($?)"
    dmsetup status sh
    [ "$(counter sh timed_out)" = 1 ] || fail "timed_out: $(dmsetup status sh)"
    dmesg | grep -q 'sh-ctl: request .* unanswered after 500 ms: pushed back' || fail "no log line for the pushed-back request"
    dmsetup resume sh || fail "resume"
    serve d sh-ctl --threads 2
    wait "$READS_PID" || fail "reads failed: $(tail -n 5 /tmp/reads.out)"
    [ "$(counter sh errors)" = 0 ] || fail "requests failed: $(dmsetup status sh)"
}

# Reload + resume (a flush suspend) with a hung daemon: the held request
# fails after request_timeout, and the new table goes live.
t_reload_resume_hung() {
    need_cmd fio
    dm_user_create rh 65536 rh-ctl 1 request_timeout=2000 || fail "create"
    hold h rh-ctl 1
    reads /dev/mapper/rh
    holding h 1
    dmsetup reload rh --table "0 65536 user 0 65536 rh-ctl 2 no_discard request_timeout=2000" || fail "reload"
    run_bounded 120 dmsetup resume rh || fail "resume did not finish ($?)"
    [ "$(dmsetup table rh)" = "0 65536 user 0 65536 rh-ctl 2 no_discard request_timeout=2000" ] ||
        fail "new table not live: $(dmsetup table rh)"
    [ "$(counter rh errors)" -ge 1 ] || fail "the held request did not fail: $(dmsetup status rh)"
    dmesg | grep -q 'rh-ctl: request .* unanswered after 2000 ms: failed' || fail "no log line for the failed request"
    serve d rh-ctl
    wait "$READS_PID" && fail "reads succeeded although a request failed"
    grep -q 'error' /tmp/reads.out || fail "fio reported no error: $(tail -n 5 /tmp/reads.out)"
}

# remove --force with a hung daemon: the error table goes live once the held
# request times out; fio fails, and the device goes.
t_remove_force_hung() {
    need_cmd fio
    dm_user_create rf 65536 rf-ctl 1 request_timeout=2000 || fail "create"
    hold h rf-ctl 1
    reads /dev/mapper/rf
    holding h 1
    run_bounded 120 dmsetup remove --force rf
    echo "dmsetup remove --force: $?"
    wait "$READS_PID" && fail "reads succeeded on a removed device"
    dm_user_remove rf 2>/dev/null
    dmsetup info rf >/dev/null 2>&1 && fail "device still there"
    next_device_works
}

# dmsetup message abort fails everything held and queued with EIO.
t_message_abort() {
    need_cmd fio
    dm_user_create ma 65536 ma-ctl || fail "create"
    hold h ma-ctl 2
    reads /dev/mapper/ma
    holding h 2
    local out n
    out=$(dmsetup message ma 0 abort) || fail "message abort refused"
    echo "abort: $out"
    n=${out#aborted=}
    [ "$n" -ge 2 ] || fail "abort ended $n requests, wanted >= 2 (the held ones)"
    wait "$READS_PID" && fail "reads succeeded after abort"
    grep -q 'Input/output error' /tmp/reads.out || fail "fio saw no EIO: $(tail -n 5 /tmp/reads.out)"
    [ "$(counter ma errors)" -ge 2 ] || fail "errors: $(dmsetup status ma)"
    dmsetup message ma 0 bogus 2>/dev/null && fail "an unknown message was accepted"
    dmsetup message ma 0 counters | grep -q '^queued=' || fail "counters message"
}

# Reload with the same control name while fio verify runs and the daemon
# stays attached: noflush and flush suspends, an option change and a resize.
t_reload_same_name() {
    need_cmd fio
    dm_user_create rl 65536 rl-ctl || fail "create"
    serve d rl-ctl --threads 2
    fio --name=reload --filename=/dev/mapper/rl --rw=randwrite --bs=16k --iodepth=16 \
        --ioengine=libaio --direct=1 --size=24M --verify=crc32c --verify_fatal=1 \
        --do_verify=1 --randrepeat=0 >/tmp/fio.out 2>&1 &
    local fio=$! i table sectors=65536 flags
    wait_for 60 bash -c "dmsetup status rl | grep -Eq 'completed=[0-9]{2,}'" || fail "no I/O: $(dmsetup status rl)"
    for i in 1 2 3 4 5 6; do
        table="0 $sectors user 0 $sectors rl-ctl"
        [ $((i % 3)) = 0 ] && table="$table 1 no_discard"
        [ "$i" = 5 ] && sectors=131072 && table="0 $sectors user 0 $sectors rl-ctl"
        flags=--noflush
        [ $((i % 2)) = 0 ] && flags=
        dmsetup reload rl --table "$table" || fail "reload $i ('$table'): same control name refused"
        run_bounded 60 dmsetup suspend $flags rl || fail "suspend $i $flags"
        dmsetup resume rl || fail "resume $i"
        [ "$(dmsetup table rl)" = "$table" ] || fail "table $i: $(dmsetup table rl), wanted $table"
        daemon_alive d || fail "the daemon exited at swap $i: $(tail -n 3 /tmp/d.out)"
        [ "$(counter rl channels)" = 2 ] || fail "channels after swap $i: $(dmsetup status rl)"
    done
    [ "$(blockdev --getsz /dev/mapper/rl)" = 131072 ] || fail "resize not visible: $(blockdev --getsz /dev/mapper/rl)"
    wait "$fio" || fail "fio verify failed across the swaps: $(grep -iE 'verify|error' /tmp/fio.out | head -n 5)"
    dmsetup status rl
    [ "$(counter rl errors)" = 0 ] || fail "requests failed: $(dmsetup status rl)"
    # A second device cannot take the name.
    dmsetup create other --table "0 8 user 0 8 rl-ctl" 2>/dev/null && fail "another device took rl-ctl"
    return 0
}

# 300 targets at once (6.1 has 128 dynamic misc minors): each created,
# served (one process, module-probe many), and removed.
t_many_targets() {
    local n=300 i spec="" names=()
    need_cmd "$PROBE"
    for i in $(seq $n); do
        spec+="m$i,,,rw,0 8 user 0 8 m$i-ctl;"
        names+=("m$i")
    done
    printf '%s\n' "${names[@]}" >>"$VMT_DEVICES_FILE"
    dmsetup create --concise "${spec%;}" || fail "creating $n targets"
    echo "created $n targets"
    dmsetup mknodes >/dev/null 2>&1
    [ "$(find /dev/dm-user -type c | wc -l)" = $n ] || fail "$(find /dev/dm-user -type c | wc -l) control devices, wanted $n"
    [ "$(find /dev/mapper -name 'm*' -type b | wc -l)" = $n ] || fail "$(find /dev/mapper -name 'm*' -type b | wc -l) devices, wanted $n"
    timeout 600 "$PROBE" many m $n || fail "serving $n targets"
    dmsetup remove "${names[@]}" || fail "removing $n targets"
    sed -i '/^m[0-9]*$/d' "$VMT_DEVICES_FILE"
    [ -z "$(find /dev/dm-user -type c 2>/dev/null)" ] || fail "control devices left: $(ls /dev/dm-user | head)"
    next_device_works
}

mtest lifecycle-suspend-noflush-unread t_suspend_noflush_unread 240
mtest lifecycle-suspend-noflush-hung-daemon t_suspend_noflush_hung 240
mtest lifecycle-reload-resume-hung-daemon t_reload_resume_hung 240
mtest lifecycle-remove-force-hung-daemon t_remove_force_hung 240
mtest lifecycle-message-abort t_message_abort 180
mtest lifecycle-reload-same-name-fio-verify t_reload_same_name 400
mtest lifecycle-300-targets t_many_targets 900
vm_tests_run
