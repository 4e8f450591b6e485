# The installed packages at work in the VM, as an admin would use them: the DKMS-built module
# from /lib/modules, the installed daemons, the `dmuser` command, the udev rule with an
# unprivileged daemon, and the units' start wrapper after a crash. scripts/dev/test-pkg.sh
# installs the .debs on the host (the guest's root), then boots this file with no module of
# the tree's loaded.
source "$DEV_ROOT/tests/vm/lib.sh"

# What the units' sandbox needs from the module is there only once it is loaded.
pkg_module() { [ -d /sys/module/dm_user ] || modprobe dm-user; }

# json_check EXPR: evaluate a Python expression over stdin's JSON as `d`; fail when false.
json_check() { python3 -c "import json, sys; d = json.load(sys.stdin); sys.exit(0 if ($1) else 1)"; }

# pattern_roundtrip DEV: 4 MiB of random data written with O_DIRECT and read back the same.
pattern_roundtrip() {
    dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 status=none &&
        dd if=/tmp/pattern of="$1" bs=1M oflag=direct conv=fsync status=none &&
        dd if="$1" of=/tmp/back bs=1M count=4 iflag=direct status=none &&
        cmp /tmp/pattern /tmp/back
}

t_dkms_module() {
    [ ! -d /sys/module/dm_user ] || fail "a dm-user module is loaded already: booted with the tree's?"
    local ko
    ko=$(modinfo -n dm-user) || fail "modinfo: no dm-user module for $VM_KVER under /lib/modules"
    [[ "$ko" == "/lib/modules/$VM_KVER/updates/dkms/"* ]] || fail "modinfo finds $ko, not DKMS's build"
    modprobe dm-user || fail "modprobe dm-user failed"
    [ "$(cat /sys/module/dm_user/srcversion)" = "$(modinfo -F srcversion "$ko")" ] ||
        fail "the loaded module is not $ko"
    dmsetup targets | grep -q '^user ' || fail "device-mapper has no user target"
    echo "loaded $ko: $(dmsetup targets | grep '^user ')"
}

t_dmuser_command() {
    need_cmd /usr/bin/dmuser /usr/bin/dmuser-ramdisk
    pkg_module || fail "modprobe dm-user failed"
    echo pkgrd >>"$VMT_DEVICES_FILE"
    daemon_start rd /usr/bin/dmuser-ramdisk --name pkgrd --size 64M
    wait_for 60 grep -q 'rd| dmuser-ramdisk: serving' "$VMT_LOG" || fail "dmuser-ramdisk did not serve"
    pattern_roundtrip /dev/mapper/pkgrd || fail "data through the installed daemon differ"
    local pid
    pid=$(daemon_pid rd)

    dmuser list | tee /tmp/list.out
    awk -v pid="$pid" '$1 == "pkgrd" && $2 == "/dev/dm-user/pkgrd" && $3 == 67108864 &&
        $4 >= 1 && $5 == pid && $6 >= 2 { ok = 1 } END { exit !ok }' /tmp/list.out ||
        fail "dmuser list: no line 'pkgrd /dev/dm-user/pkgrd 67108864 CHANNELS $pid COMPLETED...'"
    dmuser list --json | tee /tmp/list.json
    json_check "[x for x in d if x['name'] == 'pkgrd' and x['control'] == '/dev/dm-user/pkgrd' and
        x['size_bytes'] == 64 << 20 and x['channels'] >= 1 and x['daemon_pids'] == [$pid] and
        x['counters']['completed'] >= 2]" </tmp/list.json || fail "dmuser list --json: wrong entry"

    dmuser status pkgrd | tee /tmp/status.out
    grep -Eq '^  completed +[1-9]' /tmp/status.out || fail "dmuser status: no completed count"
    dmuser status pkgrd --json | json_check "d['counters']['errors'] == 0 and
        d['counters']['completed'] >= 2" || fail "dmuser status --json: wrong counters"
    dmuser status pkgrd --watch 1 >/tmp/watch.out &
    local watch=$!
    wait_for 30 bash -c '[ "$(grep -c "^pkgrd:" /tmp/watch.out)" -ge 2 ]' ||
        fail "dmuser status --watch printed fewer than 2 samples"
    kill -INT "$watch"
    wait "$watch" || fail "dmuser status --watch did not exit 0 on SIGINT"

    # Open (as a mount would hold it): the safe stop refuses and leaves it serving.
    exec 3</dev/mapper/pkgrd
    if dmuser remove pkgrd 2>/tmp/remove.err; then fail "dmuser remove removed an open device"; fi
    exec 3<&-
    cat /tmp/remove.err
    grep -q 'in use' /tmp/remove.err || fail "dmuser remove: no 'in use' reason"
    daemon_alive rd || fail "the daemon died when removal was refused"

    dmuser remove pkgrd --json | tee /tmp/remove.json
    json_check "d['removed'] and d['daemon_pids'] == [$pid] and d['daemon_pids_running'] == []" \
        </tmp/remove.json || fail "dmuser remove --json: wrong answer"
    daemon_wait rd 10 || fail "dmuser-ramdisk exited with $? after dmuser remove"
    [ ! -e /dev/mapper/pkgrd ] || fail "/dev/mapper/pkgrd is still there"
    dmuser list --json | json_check "d == []" || fail "dmuser list still shows a device"
}

# Only the package's rule: every other rule file in /lib/udev/rules.d is masked by an empty
# one of the same name in /run/udev/rules.d (tmpfs here), so no other rule probes the devices.
udev_start() {
    local r
    mkdir -p /run/udev/rules.d
    for r in /lib/udev/rules.d/*.rules /etc/udev/rules.d/*.rules; do
        [ -e "$r" ] && [ "${r##*/}" != 60-dm-user.rules ] && : >"/run/udev/rules.d/${r##*/}"
    done
    daemon_start udevd /lib/systemd/systemd-udevd --resolve-names=late
    wait_for 30 test -S /run/udev/control || fail "systemd-udevd did not start"
}

udev_stop() {
    daemon_stop udevd >/dev/null 2>&1
    rm -f /run/udev/control # libdevmapper would wait for a udev that is gone
}

t_udev_unprivileged() {
    need_cmd /lib/systemd/systemd-udevd setpriv "$VMT_PKG_SERVE"
    [ -f /lib/udev/rules.d/60-dm-user.rules ] || fail "the package's udev rule is not installed"
    local gid
    gid=$(getent group dmuser | cut -d: -f3)
    [ -n "$gid" ] || fail "no group dmuser (dmuser-tools' postinst makes it)"
    pkg_module || fail "modprobe dm-user failed"
    export DM_DISABLE_UDEV=1 # dmsetup makes its nodes itself, as everywhere in the VM
    udev_start
    trap 'udev_stop; vmt_cleanup' EXIT
    echo pkgudev >>"$VMT_DEVICES_FILE"
    dmsetup create pkgudev --noudevsync \
        --table "0 65536 user 0 65536 pkgudev 2 group=$gid mode=0660" || fail "dmsetup create"
    dmsetup mknodes pkgudev
    # udevadm settle does nothing in a chroot (the guest's root is one): wait for the node's
    # state itself.
    local got
    wait_for 30 bash -c '[ "$(stat -c "%G %a" /dev/dm-user/pkgudev)" = "dmuser 660" ]'
    got=$(stat -c '%G %a' /dev/dm-user/pkgudev) || fail "no /dev/dm-user/pkgudev"
    echo "/dev/dm-user/pkgudev: $got"
    [ "$got" = "dmuser 660" ] || fail "/dev/dm-user/pkgudev is '$got', not 'dmuser 660'"

    # nobody outside the group is refused; in it, serves the device without root.
    local drop=(setpriv --reuid=65534 --regid=65534 --inh-caps=-all --bounding-set=-all)
    if run_bounded 30 "${drop[@]}" --clear-groups "$VMT_PKG_SERVE" pkgudev 32 2>/tmp/refused.err; then
        fail "a daemon outside group dmuser served the device"
    fi
    cat /tmp/refused.err
    grep -q 'Permission denied' /tmp/refused.err || fail "refused, but not by the module's check"
    daemon_start unpriv "${drop[@]}" --groups="$gid" "$VMT_PKG_SERVE" pkgudev 32
    wait_for 60 bash -c 'dmuser status pkgudev --json | grep -q "\"channels\": [1-9]"' ||
        fail "the unprivileged daemon did not open a channel"
    pattern_roundtrip /dev/mapper/pkgudev || fail "data through the unprivileged daemon differ"
    [ "$(stat -c %u /proc/"$(daemon_pid unpriv)")" = 65534 ] || fail "the daemon is not uid 65534"
    dmuser remove pkgudev || fail "dmuser remove pkgudev"
}

# A notify socket as systemd's: a listener bound at /tmp/notify.sock writes what it gets.
notify_listen() {
    python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/tmp/notify.sock")
while True:
    with open("/tmp/notify.out", "ab") as f:
        f.write(s.recv(4096) + b"\n")' &
    echo "$! notify" >>"$VMT_DAEMONS_FILE"
    wait_for 10 test -S /tmp/notify.sock || fail "the notify listener did not bind"
}

t_service_restart() {
    need_cmd /usr/libexec/dmuser/dmuser-serve /usr/bin/dmuser-file
    pkg_module || fail "modprobe dm-user failed"
    # Restart=on-failure must come before queued requests time out; give the test room.
    echo 60000 >/sys/module/dm_user/parameters/dm_user_daemon_timeout_msec
    notify_listen
    truncate -s 16M /tmp/file.img
    echo pkgfile >>"$VMT_DEVICES_FILE"
    # What the unit's ExecStart runs, with the unit's NOTIFY_SOCKET.
    local start=(/usr/libexec/dmuser/dmuser-serve dmuser-file pkgfile --size 16M /tmp/file.img)
    NOTIFY_SOCKET=/tmp/notify.sock daemon_start first "${start[@]}"
    wait_for 60 grep -q '^READY=1' /tmp/notify.out || fail "no READY=1 on NOTIFY_SOCKET"
    cat /tmp/notify.out
    [ -b /dev/mapper/pkgfile ] || fail "READY=1 came before /dev/mapper/pkgfile was there"
    pattern_roundtrip /dev/mapper/pkgfile || fail "data through dmuser-file differ"

    daemon_stop first KILL
    # A read arrives while no daemon runs: it waits in the queue for the next one.
    dd if=/dev/mapper/pkgfile of=/tmp/after bs=1M count=4 iflag=direct status=none &
    local reader=$!
    wait_for 30 bash -c 'dmuser status pkgfile --json | grep -q "\"queued\": [1-9]"' ||
        fail "the read did not queue"
    : >/tmp/notify.out
    NOTIFY_SOCKET=/tmp/notify.sock daemon_start second "${start[@]}"
    wait_for 60 grep -q '^READY=1' /tmp/notify.out || fail "the restarted daemon sent no READY=1"
    grep -q 'second| dmuser-serve: /dev/mapper/pkgfile exists: attaching' "$VMT_LOG" ||
        fail "dmuser-serve did not attach"
    wait "$reader" || fail "the read queued across the crash failed"
    cmp /tmp/pattern /tmp/after || fail "the data read after the restart differ"
    dmuser remove pkgfile || fail "dmuser remove pkgfile"
    daemon_wait second 10 || fail "the restarted daemon exited with $?"
}

vm_test dkms-module-from-lib-modules t_dkms_module 120
vm_test installed-daemon-and-dmuser-command t_dmuser_command 180
vm_test udev-rule-unprivileged-daemon t_udev_unprivileged 180
vm_test unit-start-notify-and-restart-attach t_service_restart 180
vm_tests_run
