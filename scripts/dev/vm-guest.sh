#!/bin/bash
# ./dev vm's guest side, run by the initramfs's /init in the chroot over the
# host's root. $1 is the job share the host filled (env, cmd) and reads back
# (status, dmesg). Loads dm-mod and the dm-user module, runs the command with
# a watchdog, saves the kernel log, then returns to /init, which powers off.
JOB=$1
# shellcheck source=/dev/null
source "$JOB/env"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp TERM=dumb LANG=C.UTF-8 DEV_ROOT VM_KVER
export DMUSER_IN_VM=1

finish() {
    dmesg >"$JOB/dmesg" 2>&1
    echo "$1" >"$JOB/status.tmp" && mv "$JOB/status.tmp" "$JOB/status"
    sync
}

# shellcheck source=tests/vm/lib.sh
source "$DEV_ROOT/tests/vm/lib.sh" || {
    echo "vm: cannot source tests/vm/lib.sh"
    finish 125
    exit
}

hostname dmuser-vm 2>/dev/null
# Fail fast on a stuck task: the host turns "blocked for more than" into a
# failed run. 60 s is far beyond any I/O we wait for, even under TCG.
# VMT_TIME_SCALE (4 on the debug kernel) stretches it like every limit.
sysctl -qw kernel.hung_task_timeout_secs=$((60 * ${VMT_TIME_SCALE:-1})) kernel.panic_on_oops=1 2>/dev/null

if ! vm_modload dm-mod; then
    echo "vm: cannot load dm-mod"
    finish 125
    exit
fi
if [ -n "$VM_MODULE" ]; then
    if ! insmod "$VM_MODULE"; then
        echo "vm: insmod of the dm-user module ($VM_MODULE_SRC) failed"
        finish 125
        exit
    fi
fi

# The command runs in its own session so the watchdog can kill all of it.
setsid -w bash "$JOB/cmd" </dev/null &
cmd_pid=$!
(
    sleep "$VM_TIMEOUT"
    touch "$JOB/timedout"
    echo "vm: CMD timed out after $VM_TIMEOUT s; blocked tasks:"
    echo w >/proc/sysrq-trigger
    sleep 1
    pkill -KILL -s "$(ps -o sid= -p "$cmd_pid" 2>/dev/null | tr -d ' ')" 2>/dev/null
    finish 124
    # The command may sit in D state forever: do not wait for it.
    echo o >/proc/sysrq-trigger
) &
watchdog_pid=$!
wait "$cmd_pid"
rc=$?
if [ -e "$JOB/timedout" ]; then
    wait "$watchdog_pid"
    exit
fi
kill "$watchdog_pid" 2>/dev/null
finish "$rc"
