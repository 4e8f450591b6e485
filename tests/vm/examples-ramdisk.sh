# dmuser-ramdisk in the VM: data integrity at QD1/QD32 over 1 and 4 channels, an ext4 round
# trip, and the command line's failures (bad size, taken name, no module, busy device).
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/examples-lib.bash"

t_verify_1ch() {
    ex_start rd rd dmuser-ramdisk --size 64M --channels 1
    ex_fio /dev/mapper/rd 1
    ex_fio /dev/mapper/rd 32
    ex_stop rd rd
}

t_verify_4ch() {
    # The ramdisk takes WRITEs into its memory (write_view): each of the 4 x 8 reads in
    # flight has a channel of its own.
    ex_start rd rd dmuser-ramdisk --size 64M --threads 2 --channels 4 --depth 8
    dmsetup status rd | grep -q ' channels=32' || fail "expected 32 channels: $(dmsetup status rd)"
    ex_fio /dev/mapper/rd 1
    ex_fio /dev/mapper/rd 32
    ex_stop rd rd
}

t_ext4() {
    ex_start rd rd dmuser-ramdisk --size 128M --threads 2
    ex_ext4 /dev/mapper/rd
    ex_stop rd rd
}

t_discard() {
    ex_start rd rd dmuser-ramdisk --size 16M
    dd if=/dev/urandom of=/dev/mapper/rd bs=1M count=16 oflag=direct status=none || fail "dd"
    blkdiscard -o 1M -l 4M /dev/mapper/rd || fail "blkdiscard"
    cmp -n 4M <(dd if=/dev/mapper/rd bs=1M skip=1 count=4 iflag=direct status=none) /dev/zero ||
        fail "discarded range does not read as zeros"
    fallocate -z -o 8M -l 3M /dev/mapper/rd || fail "fallocate -z"
    cmp -n 3M <(dd if=/dev/mapper/rd bs=1M skip=8 count=3 iflag=direct status=none) /dev/zero ||
        fail "zeroed range does not read as zeros"
    ex_stop rd rd
}

t_cli_errors() {
    "$EX_BIN/dmuser-ramdisk" --help >/tmp/help || fail "--help exited $?"
    for opt in --name --size --threads --channels --stats --attach; do
        grep -q -- "$opt" /tmp/help || fail "--help does not mention $opt"
    done
    ex_one_line_error 'required' "$EX_BIN/dmuser-ramdisk" --size 16M
    ex_one_line_error '512' "$EX_BIN/dmuser-ramdisk" --name bad --size 1000
    ex_one_line_error 'size' "$EX_BIN/dmuser-ramdisk" --name bad --size 12Q
    ex_one_line_error 'threads' "$EX_BIN/dmuser-ramdisk" --name bad --size 1M --threads 0
    ex_one_line_error 'unknown' "$EX_BIN/dmuser-ramdisk" --name bad --size 1M --frobnicate
    dm_user_create taken 2048 takenctl || fail "cannot create the device 'taken'"
    ex_one_line_error 'already in use' "$EX_BIN/dmuser-ramdisk" --name taken --size 1M
    ex_one_line_error 'takenctl' "$EX_BIN/dmuser-ramdisk" --name other --control takenctl --size 1M
    dmsetup info other >/dev/null 2>&1 && fail "a failed start left device 'other' behind"
    dm_user_remove taken || fail "cannot remove 'taken'"

    # Without the module: a clear sentence, then the module comes back for later tests.
    [ -f /run/vmjob/dm-user.ko ] || fail "no /run/vmjob/dm-user.ko to reload the module from"
    rmmod dm_user || fail "rmmod dm_user"
    ex_one_line_error 'module is not loaded' "$EX_BIN/dmuser-ramdisk" --name nomod --size 1M
    insmod /run/vmjob/dm-user.ko || fail "cannot reload the module"
}

# A mounted device cannot be removed: the daemon says so, serves on, and goes at the next
# signal once the file system is unmounted.
t_busy_shutdown() {
    vm_modload ext4 || fail "ext4"
    ex_start rd rd dmuser-ramdisk --size 64M
    mkfs.ext4 -q /dev/mapper/rd || fail "mkfs"
    mkdir -p /tmp/mnt && mount /dev/mapper/rd /tmp/mnt || fail "mount"
    echo hello >/tmp/mnt/file
    kill -TERM "$(daemon_pid rd)"
    # It tries to remove the device, gives up on EBUSY and says so.
    wait_for 60 grep -q 'still serving it' "$VMT_LOG" ||
        fail "the daemon did not report the device as busy"
    daemon_alive rd || fail "the daemon exited with its device mounted"
    sync && cat /tmp/mnt/file >/dev/null || fail "the mounted file system stopped working"
    umount /tmp/mnt || fail "umount"
    ex_stop rd rd
}

vm_test verify-1ch t_verify_1ch 240
vm_test verify-4ch t_verify_4ch 240
vm_test ext4 t_ext4 300
vm_test discard-zeroes t_discard 120
vm_test cli-errors t_cli_errors 180
vm_test busy-shutdown t_busy_shutdown 120
vm_tests_run
