# dmuser-file in the VM: integrity over a sparse file and (O_DIRECT) over a block device, ext4,
# durability across kill -9, and discard / write-zeroes reaching the backing file's allocation;
# the --filter stacks over it. And dmuser-nbd, the other store over someone else's storage:
# nbdkit's exports in the guest, and nbdkit going away.
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
    for opt in --name --size --direct --threads --channels --attach --filter FILE; do
        grep -q -- "$opt" /tmp/help || fail "--help does not mention $opt"
    done
    ex_one_line_error 'cannot open /nonexistent' "$EX_BIN/dmuser-file" --name bad /nonexistent
    ex_one_line_error 'FILE is required' "$EX_BIN/dmuser-file" --name bad
    : >/tmp/empty
    ex_one_line_error 'must not be zero' "$EX_BIN/dmuser-file" --name bad /tmp/empty
    ex_one_line_error 'O_DIRECT' "$EX_BIN/dmuser-file" --name bad --direct --size 1M /tmp/empty
    ex_one_line_error 'neither' "$EX_BIN/dmuser-file" --name bad /dev/null
    ex_one_line_error "no filter is named 'frob'" "$EX_BIN/dmuser-file" --name bad --size 1M \
        --filter frob /tmp/empty
    ex_one_line_error "rate='2' is not a chance" "$EX_BIN/dmuser-file" --name bad --size 1M \
        --filter error:rate=2 /tmp/empty
    dmsetup info bad >/dev/null 2>&1 && fail "a failed start left device 'bad' behind"
    rm -f /tmp/empty
}

# --filter error: ext4 works until the trigger file appears; then its writes fail, the file
# system sees the I/O errors (fsync fails, the kernel logs them), and nothing WARNs or BUGs.
t_filter_error_ext4() {
    rm -f /tmp/backing /tmp/fail-now
    ex_start fe fe dmuser-file --size 64M --filter error:op=write+flush,trigger=/tmp/fail-now \
        --filter stats /tmp/backing
    vm_modload ext4 || fail "ext4"
    mkfs.ext4 -q /dev/mapper/fe || fail "mkfs.ext4 before the trigger"
    mkdir -p /tmp/fe-mnt
    mount -o errors=continue /dev/mapper/fe /tmp/fe-mnt || fail "mount"
    dd if=/dev/urandom of=/tmp/fe-mnt/before bs=1M count=2 conv=fsync status=none ||
        fail "a write before the trigger failed"
    : >/tmp/fail-now
    if dd if=/dev/urandom of=/tmp/fe-mnt/after bs=1M count=2 conv=fsync status=none 2>/dev/null; then
        fail "a write with fsync succeeded while the device failed every write"
    fi
    wait_for 30 sh -c 'dmesg | grep -Eq "I/O error.*dm-|EXT4-fs (error|warning).*dm-"' ||
        fail "the kernel logged no I/O error for the device"
    rm -f /tmp/fail-now
    umount /tmp/fe-mnt || fail "umount after the errors"
    ex_stop fe fe
    rm -f /tmp/backing
}

# --filter offset:partition=2 serves partition 2 of a GPT disk image made by sgdisk: its size,
# its bytes, and nothing written outside it.
t_filter_gpt_partition() {
    need_cmd sgdisk
    rm -f /tmp/disk.img
    truncate -s 192M /tmp/disk.img # partition 2 holds lib.sh's ext4 tree
    sgdisk -o -n 1:2048:+16M -n 2:0:0 /tmp/disk.img >/dev/null || fail "sgdisk"
    local first last
    first=$(sgdisk -i 2 /tmp/disk.img | awk '/^First sector/ {print $3}')
    last=$(sgdisk -i 2 /tmp/disk.img | awk '/^Last sector/ {print $3}')
    [ -n "$first" ] && [ -n "$last" ] || fail "cannot read partition 2 back from sgdisk"
    dd if=/dev/urandom of=/tmp/part2 bs=512 count=8 status=none
    dd if=/tmp/part2 of=/tmp/disk.img bs=512 seek="$first" conv=notrunc status=none
    local outside
    outside=$(dd if=/tmp/disk.img bs=512 count="$first" status=none | md5sum)
    ex_start gp gp dmuser-file --filter offset:partition=2 /tmp/disk.img
    [ "$(blockdev --getsize64 /dev/mapper/gp)" -eq $(((last - first + 1) * 512)) ] ||
        fail "device is $(blockdev --getsize64 /dev/mapper/gp) B, partition 2 is $(((last - first + 1) * 512)) B"
    cmp -n 4096 /tmp/part2 /dev/mapper/gp || fail "the device does not start at partition 2"
    ex_ext4 /dev/mapper/gp
    ex_stop gp gp
    [ "$(dd if=/tmp/disk.img bs=512 count="$first" status=none | md5sum)" = "$outside" ] ||
        fail "bytes before partition 2 changed"
    sgdisk -v /tmp/disk.img | grep -q 'No problems found' || fail "the GPT is damaged"
    rm -f /tmp/disk.img /tmp/part2
}

# nbd_start SOCKET PLUGIN ARGS...: nbdkit in the background on a Unix socket, ready when it
# has written its pid file.
nbd_start() {
    local sock=$1
    shift
    rm -f "$sock" "$sock.pid"
    daemon_start nbdkit nbdkit --foreground --unix "$sock" --pidfile "$sock.pid" "$@"
    wait_for 30 test -e "$sock.pid" || fail "nbdkit did not start"
}

# dmuser-nbd over nbdkit memory (fio verify at QD32, two threads) and nbdkit file (ext4).
t_nbd() {
    need_cmd nbdkit
    nbd_start /tmp/nbd.sock memory 64M
    ex_start nb nb dmuser-nbd --threads 2 'nbd+unix:///?socket=/tmp/nbd.sock'
    ex_fio /dev/mapper/nb 32
    ex_stop nb nb
    daemon_stop nbdkit
    rm -f /tmp/nbd.img
    truncate -s 128M /tmp/nbd.img
    nbd_start /tmp/nbd.sock file /tmp/nbd.img
    ex_start nb nb dmuser-nbd 'nbd+unix:///?socket=/tmp/nbd.sock'
    ex_ext4 /dev/mapper/nb
    ex_stop nb nb
    daemon_stop nbdkit
    rm -f /tmp/nbd.img
}

# The server killed under the device: reads fail with EIO (none hangs) and the daemon says so;
# with --reconnect, once nbdkit is back the device serves again.
t_nbd_server_gone() {
    need_cmd nbdkit
    rm -f /tmp/nbd.img
    truncate -s 64M /tmp/nbd.img
    nbd_start /tmp/nbd.sock file /tmp/nbd.img
    ex_start nb nb dmuser-nbd --reconnect 'nbd+unix:///?socket=/tmp/nbd.sock'
    dd if=/dev/urandom of=/tmp/nbd.data bs=64K count=4 status=none
    dd if=/tmp/nbd.data of=/dev/mapper/nb bs=64K oflag=direct conv=fsync status=none ||
        fail "write while the server runs"
    kill -KILL "$(daemon_pid nbdkit)"
    daemon_wait nbdkit 10
    local rc
    run_bounded 60 dd if=/dev/mapper/nb of=/dev/null bs=64K count=1 iflag=direct status=none
    rc=$?
    [ $rc -ne 124 ] || fail "a read hung with the server gone"
    [ $rc -ne 0 ] || fail "a read succeeded with the server gone"
    wait_for 10 grep -q 'NBD connection lost' "$VMT_LOG" || fail "the daemon did not report the lost server"
    nbd_start /tmp/nbd.sock file /tmp/nbd.img
    run_bounded 60 cmp -n $((256 << 10)) /tmp/nbd.data /dev/mapper/nb ||
        fail "after --reconnect the device does not read back what was written"
    ex_stop nb nb
    daemon_stop nbdkit
    rm -f /tmp/nbd.img /tmp/nbd.data
}

vm_test verify-file-1ch t_verify_file_1ch 240
vm_test verify-blockdev-direct-4ch t_verify_blockdev_4ch 180
vm_test ext4 t_ext4 300
vm_test restart-after-kill t_restart 180
vm_test discard-write-zeroes t_discard_zeroes 180
vm_test cli-errors t_cli_errors 180
vm_test filter-error-ext4 t_filter_error_ext4 300
vm_test filter-gpt-partition t_filter_gpt_partition 300
vm_test nbd-fio-ext4 t_nbd 400
vm_test nbd-server-gone t_nbd_server_gone 300
vm_tests_run
