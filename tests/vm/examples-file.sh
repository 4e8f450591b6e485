# dmuser-file in the VM: integrity over a sparse file and (O_DIRECT) over a block device, ext4,
# durability across kill -9, and discard / write-zeroes reaching the backing file's allocation.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/examples-lib.bash"

t_verify_file_1ch() {
    rm -f /tmp/backing
    ex_start fd fd dmuser-file --size 64M --channels 1 /tmp/backing
    [ "$(stat -c %s /tmp/backing)" -eq $((64 << 20)) ] || fail "backing file not 64 MiB"
    ex_fio /dev/mapper/fd 1
    ex_fio /dev/mapper/fd 32
    ex_stop fd fd
    rm -f /tmp/backing
}

# O_DIRECT needs a backing that supports it (tmpfs does not): a brd ramdisk (64 MiB).
t_verify_blockdev_4ch() {
    vm_modload brd || fail "brd"
    [ -b /dev/ram0 ] || fail "no /dev/ram0"
    ex_start fd fd dmuser-file --direct --threads 2 --channels 4 /dev/ram0
    dmsetup status fd | grep -q ' channels=4' || fail "expected 4 channels: $(dmsetup status fd)"
    ex_fio /dev/mapper/fd 1
    ex_fio /dev/mapper/fd 32
    ex_stop fd fd
}

t_ext4() {
    rm -f /tmp/backing
    ex_start fd fd dmuser-file --size 128M --threads 2 /tmp/backing
    ex_ext4 /dev/mapper/fd
    ex_stop fd fd
    rm -f /tmp/backing
}

# Written and flushed data is in the file: kill -9, --attach to the same device, read it back;
# then stop, start afresh on the same file, read it again.
t_restart() {
    rm -f /tmp/backing
    dd if=/dev/urandom of=/tmp/data bs=1M count=8 status=none
    ex_start fd fd dmuser-file --size 64M /tmp/backing
    dd if=/tmp/data of=/dev/mapper/fd bs=1M seek=3 oflag=direct conv=fsync status=none ||
        fail "dd to the device"
    kill -KILL "$(daemon_pid fd)"
    daemon_wait fd 10
    dmsetup info fd >/dev/null 2>&1 || fail "the device went with the killed daemon"
    ex_one_line_error 'already in use.*--attach' "$EX_BIN/dmuser-file" --name fd --size 64M /tmp/backing
    ex_start fd2 fd dmuser-file --attach --size 64M /tmp/backing
    cmp <(dd if=/dev/mapper/fd bs=1M skip=3 count=8 iflag=direct status=none) /tmp/data ||
        fail "data written before kill -9 is not there after --attach"
    ex_stop fd2 fd
    cmp <(dd if=/tmp/backing bs=1M skip=3 count=8 status=none) /tmp/data ||
        fail "the backing file does not hold the data"
    ex_start fd3 fd dmuser-file /tmp/backing
    cmp <(dd if=/dev/mapper/fd bs=1M skip=3 count=8 iflag=direct status=none) /tmp/data ||
        fail "data lost across a restart"
    ex_stop fd3 fd
    rm -f /tmp/backing /tmp/data
}

# Discard punches holes; write-zeroes zeroes without writing (ZERO_RANGE, or a hole on tmpfs).
t_discard_zeroes() {
    rm -f /tmp/backing
    ex_start fd fd dmuser-file --size 64M /tmp/backing
    dd if=/dev/urandom of=/dev/mapper/fd bs=1M count=32 oflag=direct conv=fsync status=none ||
        fail "dd"
    local full after_discard after_zero
    full=$(ex_blocks /tmp/backing)
    [ "$full" -ge $((32 * 2048)) ] || fail "32 MiB written but only $full blocks allocated"
    blkdiscard -o 4M -l 8M /dev/mapper/fd || fail "blkdiscard"
    after_discard=$(ex_blocks /tmp/backing)
    echo "allocated 512-byte blocks: $full written, $after_discard after discarding 8 MiB"
    [ $((full - after_discard)) -ge $((8 * 2048 - 64)) ] || fail "discard freed only $((full - after_discard)) blocks"
    cmp -n 8M <(dd if=/dev/mapper/fd bs=1M skip=4 count=8 iflag=direct status=none) /dev/zero ||
        fail "discarded range does not read as zeros"
    fallocate -z -o 16M -l 8M /dev/mapper/fd || fail "fallocate -z on the device"
    after_zero=$(ex_blocks /tmp/backing)
    echo "allocated 512-byte blocks: $after_zero after zeroing 8 MiB more"
    cmp -n 8M <(dd if=/dev/mapper/fd bs=1M skip=16 count=8 iflag=direct status=none) /dev/zero ||
        fail "zeroed range does not read as zeros"
    cmp -n 8M <(dd if=/tmp/backing bs=1M skip=16 count=8 status=none) /dev/zero ||
        fail "zeroed range is not zero in the backing file"
    [ "$after_zero" -le "$after_discard" ] || fail "write-zeroes allocated blocks ($after_discard -> $after_zero): it was written, not zeroed"
    ex_stop fd fd
    rm -f /tmp/backing
}

t_cli_errors() {
    "$EX_BIN/dmuser-file" --help >/tmp/help || fail "--help exited $?"
    for opt in --name --size --direct --threads --channels --attach FILE; do
        grep -q -- "$opt" /tmp/help || fail "--help does not mention $opt"
    done
    ex_one_line_error 'cannot open /nonexistent' "$EX_BIN/dmuser-file" --name bad /nonexistent
    ex_one_line_error 'FILE is required' "$EX_BIN/dmuser-file" --name bad
    : >/tmp/empty
    ex_one_line_error 'must not be zero' "$EX_BIN/dmuser-file" --name bad /tmp/empty
    ex_one_line_error 'O_DIRECT' "$EX_BIN/dmuser-file" --name bad --direct --size 1M /tmp/empty
    ex_one_line_error 'neither' "$EX_BIN/dmuser-file" --name bad /dev/null
    dmsetup info bad >/dev/null 2>&1 && fail "a failed start left device 'bad' behind"
    rm -f /tmp/empty
}

vm_test verify-file-1ch t_verify_file_1ch 240
vm_test verify-blockdev-direct-4ch t_verify_blockdev_4ch 180
vm_test ext4 t_ext4 300
vm_test restart-after-kill t_restart 180
vm_test discard-write-zeroes t_discard_zeroes 180
vm_test cli-errors t_cli_errors 180
vm_tests_run
