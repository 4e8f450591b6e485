# Helpers of the soak scenarios (tests/soak/*.sh), sourced after
# tests/vm/lib.sh. Each scenario is a vm_test (own process group, cleanup,
# kernel log check), bounded by its cycle count and its time limit, and
# writes its figures with `figure`; ./dev soak puts them in RESULTS.md.
# Env: VMT_SOAK_CYCLES (default 100), VMT_SOAK_ONLY (a glob of scenario names).

# Used by the scenario files.
# shellcheck disable=SC2034
CYCLES=${VMT_SOAK_CYCLES:-100}
# shellcheck disable=SC2034
BIN=$VMT_BUILD/examples
FIGURES=/run/vmjob/figures

# figure SCENARIO KEY=VALUE...: one row of RESULTS.md.
figure() {
    local IFS=' '
    printf '%s\t%s\n' "$1" "${*:2}" >>"$FIGURES"
    echo "figures: ${*:2}"
}

# progress I N WHAT: a line every tenth of the cycles, in the test's log and
# on the console, which the host shows (its "vmtest: " lines).
progress() {
    local step=$(($2 / 10)) line
    [ "$step" -gt 0 ] || step=1
    [ $(($1 % step)) = 0 ] || return 0
    line="  $3: cycle $1/$2 ($(date +%T))"
    echo "$line"
    echo "vmtest: $line" >/dev/console 2>/dev/null
    return 0
}

# stest NAME FUNC SECS: register a scenario unless VMT_SOAK_ONLY leaves it out.
stest() {
    # shellcheck disable=SC2053
    [[ "$1" == ${VMT_SOAK_ONLY:-*} ]] && vm_test "$@"
}

# complaints: kernel log lines that would fail a test, so far.
complaints() { dmesg | grep -cE 'WARNING:|BUG:|Oops|blocked for more than|general protection' || true; }

# serving LOG: wait until the example daemon writing LOG serves.
serving() { wait_for 60 grep -q 'serving' "$1"; }

# example NAME PROGRAM ARGS...: start the example daemon PROGRAM (dmuser-file,
# dmuser-ramdisk) for /dev/mapper/NAME, its log in /tmp/NAME.log, and wait
# until it serves; its pid in EXAMPLE_PID. The test's cleanup removes NAME.
example() {
    local name=$1 prog=$2
    shift 2
    "$BIN/$prog" --name "$name" "$@" >"/tmp/$name.log" 2>&1 &
    EXAMPLE_PID=$!
    grep -qx "$name" "$VMT_DEVICES_FILE" 2>/dev/null || echo "$name" >>"$VMT_DEVICES_FILE"
    serving "/tmp/$name.log" || fail "$prog --name $name $* did not serve: $(tail -n 3 "/tmp/$name.log")"
}

# verify_loop DEV PREFIX: fio verify runs (32 MiB, QD16) on /dev/mapper/DEV,
# one after another in the background, until verify_loop_end PREFIX.
verify_loop() {
    local dev=$1 prefix=$2
    rm -f "$prefix.stop" "$prefix.runs"
    (
        while [ ! -f "$prefix.stop" ]; do
            if fio --name="$dev" --filename="/dev/mapper/$dev" --rw=randwrite --bs=16k --iodepth=16 \
                --ioengine=libaio --direct=1 --size=32M --verify=crc32c --verify_fatal=1 \
                --do_verify=1 --randrepeat=0 >"$prefix.fio" 2>&1; then
                echo ok >>"$prefix.runs"
            else
                echo bad >>"$prefix.runs"
                cp "$prefix.fio" "$prefix.fio.bad.$(wc -l <"$prefix.runs")"
            fi
        done
    ) &
    VERIFY_LOOP_PID=$!
}

# verify_loop_end PREFIX: stop the loop after its current run; sets
# VERIFY_RUNS and VERIFY_BAD.
verify_loop_end() {
    touch "$1.stop"
    wait "$VERIFY_LOOP_PID"
    VERIFY_RUNS=$(grep -c . "$1.runs" 2>/dev/null || true)
    VERIFY_BAD=$(grep -c bad "$1.runs" 2>/dev/null || true)
}
