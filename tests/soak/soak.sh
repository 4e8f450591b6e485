#!/bin/bash
# The soak scenarios that run in the normal (2 GiB) guest; memory.sh has the
# one that needs a small guest. See tests/soak/README.md.
source "$DEV_ROOT/tests/vm/lib.sh"

source "$DEV_ROOT/tests/soak/lib.bash"

# SIGKILL dmuser-file while a writer fsyncs, restart it with --attach; at the
# end every acknowledged write must read back.
t_kill_restart() {
    need_cmd python3 "$BIN/dmuser-file"
    local img=/tmp/kr.img ledger=/tmp/kr.ledger i lines=0 now
    example kr dmuser-file --size 64M "$img"
    local pid=$EXAMPLE_PID
    rm -f "$ledger" /tmp/kr.stop
    python3 "$DEV_ROOT/tests/soak/writer.py" write /dev/mapper/kr "$ledger" /tmp/kr.stop >/tmp/kr.writer 2>&1 &
    local writer=$!
    for i in $(seq "$CYCLES"); do
        # Kill it only once the writer got something acknowledged by this one.
        wait_for 120 bash -c "[ \$(grep -c acked $ledger 2>/dev/null) -gt $lines ]" ||
            fail "cycle $i: no write acknowledged: $(tail -n 3 /tmp/kr.log)"
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null
        now=$(grep -c acked "$ledger")
        lines=$now
        example kr dmuser-file --attach "$img"
        pid=$EXAMPLE_PID
        progress "$i" "$CYCLES" kill-restart
    done
    touch /tmp/kr.stop
    wait "$writer" || fail "the writer failed: $(tail -n 3 /tmp/kr.writer)"
    local verify
    verify=$(python3 "$DEV_ROOT/tests/soak/writer.py" verify /dev/mapper/kr "$ledger")
    local rc=$?
    kill -TERM "$pid"
    wait "$pid"
    dm_user_remove kr 2>/dev/null
    figure kill-restart "cycles=$CYCLES" "$(cat /tmp/kr.writer)" "$verify" "kernel_complaints=$(complaints)"
    [ "$rc" = 0 ] || fail "acknowledged writes lost: $verify"
}

# Take the device away under fio 100 times: SIGKILL the daemon and remove
# the device, or dmsetup remove --force it while the daemon serves.
# Nothing may hang, and rmmod must work at the end.
t_remove_under_load() {
    need_cmd fio "$BIN/dmuser-ramdisk"
    local i pid fio hung=0 slab_before slab_after how
    bio_objects() { awk '/^bio-/ { n += $2 } END { print n + 0 }' /proc/slabinfo; }
    sync
    echo 3 >/proc/sys/vm/drop_caches
    slab_before=$(bio_objects)
    for i in $(seq "$CYCLES"); do
        example ru dmuser-ramdisk --size 32M --threads 2
        pid=$EXAMPLE_PID
        fio --name=ru --filename=/dev/mapper/ru --rw=randrw --bs=16k --iodepth=16 \
            --ioengine=libaio --direct=1 --time_based --runtime=120 --size=24M >/tmp/ru.fio 2>&1 &
        fio=$!
        wait_for 60 bash -c "dmsetup status ru | grep -Eq 'completed=[0-9]{2,}'" ||
            fail "cycle $i: no I/O: $(dmsetup status ru)"
        if [ $((i % 2)) = 1 ]; then
            how="kill"
            kill -KILL "$pid"
        else
            how="remove"
            run_bounded 60 dmsetup remove --force ru >/dev/null 2>&1
        fi
        wait_for 60 bash -c "! kill -0 $fio 2>/dev/null" || { hung=$((hung + 1)); kill -KILL "$fio"; }
        wait_for 60 bash -c "! kill -0 $pid 2>/dev/null" || { hung=$((hung + 1)); kill -KILL "$pid"; }
        wait "$fio" "$pid" 2>/dev/null
        dm_user_remove ru || fail "cycle $i ($how): the device cannot be removed"
        progress "$i" "$CYCLES" remove-under-load
    done
    sync
    echo 3 >/proc/sys/vm/drop_caches
    slab_after=$(bio_objects)
    local rmmod=ok
    rmmod dm_user || rmmod=failed
    insmod "${VM_MODULE:-/run/vmjob/dm-user.ko}" || fail "cannot load the module again"
    figure remove-under-load "cycles=$CYCLES" "hung=$hung" "bio_slab_objects_before=$slab_before" \
        "after=$slab_after" "rmmod=$rmmod" "kernel_complaints=$(complaints)"
    [ "$hung" = 0 ] || fail "$hung processes hung"
    [ "$rmmod" = ok ] || fail "rmmod dm_user failed"
}

# Suspend and resume 100 times, flush and noflush in turn, while fio verify
# runs on dmuser-ramdisk.
t_suspend_storm() {
    need_cmd fio "$BIN/dmuser-ramdisk"
    example ss dmuser-ramdisk --size 64M --threads 2
    local pid=$EXAMPLE_PID i flags start ms worst=0 runs bad
    verify_loop ss /tmp/ss
    for i in $(seq "$CYCLES"); do
        flags=--noflush
        [ $((i % 2)) = 0 ] && flags=
        start=$(date +%s%N)
        run_bounded 120 dmsetup suspend $flags ss || fail "cycle $i: suspend $flags did not finish"
        ms=$((($(date +%s%N) - start) / 1000000))
        [ "$ms" -gt "$worst" ] && worst=$ms
        dmsetup resume ss || fail "cycle $i: resume"
        progress "$i" "$CYCLES" suspend-storm
    done
    verify_loop_end /tmp/ss
    runs=$VERIFY_RUNS bad=$VERIFY_BAD
    kill -TERM "$pid"
    wait "$pid"
    figure suspend-storm "cycles=$CYCLES" "fio_verify_runs=$runs" "verify_errors=$bad" \
        "worst_suspend_ms=$worst" "kernel_complaints=$(complaints)"
    [ "$bad" = 0 ] || fail "$bad fio verify runs failed: $(grep -h -iE 'verify|error' /tmp/ss.fio.bad.* | head -n 3)"
}

# The protocol fuzzer (tests/protocol-fuzz.c) against a target that fio
# keeps busy, one run of 100000 messages per ten cycles with seeds 1, 2, ...,
# while fio verify loops on a second, well-served target.
t_protocol_fuzz() {
    local fuzz=$VMT_BUILD/tests/protocol-fuzz runs=$(((CYCLES + 9) / 10)) seed out least=""
    need_cmd fio "$fuzz" "$BIN/dmuser-ramdisk"
    dm_user_create fz 65536 fz-ctl || fail "create the fuzzed target"
    # fio gives up on some errors whatever continue_on_error says: start it
    # again, so requests keep coming while the fuzzer runs.
    rm -f /tmp/fz.stop
    (
        while [ ! -f /tmp/fz.stop ]; do
            fio --name=fz --filename=/dev/mapper/fz --rw=randrw --bsrange=4k-128k --iodepth=16 \
                --ioengine=libaio --direct=1 --time_based --runtime=3600 --continue_on_error=all \
                >/tmp/fz.fio 2>&1
            echo "fio ended: $(grep -m1 -i 'error' /tmp/fz.fio)" >>/tmp/fz.restarts
        done
    ) &
    local hostile=$!
    example ok dmuser-ramdisk --size 64M --threads 2
    local pid=$EXAMPLE_PID
    verify_loop ok /tmp/ok
    wait_for 60 bash -c "dmsetup status fz | grep -q 'queued=[1-9]'" || fail "fio queued nothing: $(tail -n 3 /tmp/fz.fio)"
    (
        while kill -0 "$hostile" 2>/dev/null; do
            echo "vmtest:   fz: $(dmsetup status fz | cut -d' ' -f4-), fio restarts: $(grep -c . /tmp/fz.restarts 2>/dev/null)" >/dev/console
            sleep 20
        done
    ) &
    for seed in $(seq "$runs"); do
        out=$(timeout 1800 "$fuzz" fz-ctl "$seed" 100000) || fail "seed $seed: the fuzzer failed ($?): $out; $(dmsetup status fz); fio: $(tail -n 3 /tmp/fz.fio)"
        echo "seed $seed: $out"
        echo "vmtest:   protocol-fuzz: seed $seed: $out" >/dev/console 2>/dev/null
        out=${out#messages=}
        out=${out%% *}
        [ -z "$least" ] || [ "$out" -lt "$least" ] && least=$out
    done
    dmsetup status fz
    touch /tmp/fz.stop
    pkill -TERM -f 'fio --name=fz'
    wait "$hostile"
    echo "fio restarts: $(grep -c . /tmp/fz.restarts 2>/dev/null)"; head -n 3 /tmp/fz.restarts 2>/dev/null
    dm_user_remove fz || fail "the fuzzed target cannot be removed"
    local bad runs_ok
    verify_loop_end /tmp/ok
    bad=$VERIFY_BAD runs_ok=$VERIFY_RUNS
    kill -TERM "$pid"
    wait "$pid"
    figure protocol-fuzz "fuzz_runs=$runs" "least_messages_per_run=$least" "healthy_verify_runs=$runs_ok" \
        "healthy_verify_errors=$bad" "kernel_complaints=$(complaints)"
    [ "$bad" = 0 ] || fail "fio verify failed $bad times on the healthy target"
    [ "$least" -ge 100000 ] || fail "a run sent only $least messages (the kernel stopped handing out requests?)"
}

stest kill-restart t_kill_restart 3000
stest remove-under-load t_remove_under_load 3000
stest suspend-storm t_suspend_storm 2400
stest protocol-fuzz t_protocol_fuzz 5000
vm_tests_run
