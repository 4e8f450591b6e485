# dmuser-rbd in the VM, against a one-node Ceph cluster made at the start (ceph-lib.bash): fio
# verify, ext4, byte-for-byte agreement with the kernel's own RBD client (krbd) both ways, the
# OSD going away and coming back, kill -9 and --attach, and no watcher left by a clean stop.
# One cluster and one 128 MiB image for the whole file: the cluster takes a minute or more to
# come up under TCG.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/examples-lib.bash"
source "$DEV_ROOT/tests/vm/ceph-lib.bash"

RB_IMAGE=img

# Every test after the first needs the cluster and the image it made.
rb_need_cluster() {
    [ -e "$CEPH_DIR/image-ready" ] || fail "no cluster: the ceph-cluster test failed"
}

# rb_start LABEL [OPTION...]: dmuser-rbd serving rbd/img as /dev/mapper/rb.
rb_start() {
    local label=$1
    shift
    ex_start "$label" rb dmuser-rbd --conf "$CEPH_CONF" "$@" "rbd/$RB_IMAGE"
}

t_cluster() {
    ceph_cluster_start || fail "the cluster did not start"
    ceph_image_create "$RB_IMAGE" 128M || fail "rbd create"
    touch "$CEPH_DIR/image-ready"
}

# Bad input is one line on stderr and leaves nothing behind; so is an image or a cluster that
# is not there.
t_cli_errors() {
    rb_need_cluster
    "$EX_BIN/dmuser-rbd" --help >/tmp/help || fail "--help exited $?"
    for opt in --name --conf --id --pool --image --read-only --attach --threads; do
        grep -q -- "$opt" /tmp/help || fail "--help does not mention $opt"
    done
    ex_one_line_error 'IMAGE.*is required' "$EX_BIN/dmuser-rbd" --name bad
    ex_one_line_error "'rbd': expected POOL/IMAGE" "$EX_BIN/dmuser-rbd" --name bad rbd
    ex_one_line_error "not both" "$EX_BIN/dmuser-rbd" --name bad --image x rbd/img
    ex_one_line_error "cannot open image 'rbd/nope': No such file" \
        "$EX_BIN/dmuser-rbd" --name bad --conf "$CEPH_CONF" rbd/nope
    ex_one_line_error "cannot open pool 'nopool'" \
        "$EX_BIN/dmuser-rbd" --name bad --conf "$CEPH_CONF" nopool/img
    ex_one_line_error "cannot read /nonexistent" \
        "$EX_BIN/dmuser-rbd" --name bad --conf /nonexistent rbd/img
    # A cluster whose monitor is not there: refused at once on 127.0.0.1, given up after 1 s.
    sed 's/^mon host = .*/mon host = 127.0.0.1:1/' "$CEPH_CONF" >/tmp/nomon.conf
    ex_one_line_error "cannot connect to the Ceph cluster" \
        "$EX_BIN/dmuser-rbd" --name bad --conf /tmp/nomon.conf --mount-timeout 1 rbd/img
    dmsetup info bad >/dev/null 2>&1 && fail "a failed start left device 'bad' behind"
    return 0
}

# fio crc32c verify at QD1 and QD32 over two server threads; while it serves, the image has
# exactly one watcher (the daemon's), and none once it stopped cleanly.
t_fio() {
    rb_need_cluster
    rb_start rb --threads 2
    local w
    w=$(ceph_watchers "$RB_IMAGE")
    echo "watchers while serving: ${w:-none}"
    [ "$(grep -c . <<<"$w")" -eq 1 ] || fail "expected one watcher while serving, got: ${w:-none}"
    ex_fio /dev/mapper/rb 1 --size=32M
    ex_fio /dev/mapper/rb 32 --size=32M --offset=64M
    ex_stop rb rb
    w=$(ceph_watchers "$RB_IMAGE")
    [ -z "$w" ] || fail "a clean stop left a watcher: $w"
    echo "no watcher after the clean stop"
}

# lib.sh's round trip of a smaller tree than its default /usr/include (54 MiB, 160 s here
# under TCG, most of it QD1 reads at Ceph's latency): /usr/include/linux, 6.6 MiB in 790 files,
# still mkfs's discards and zeroes, the journal's flushes and FUA writes, fsck and a diff.
t_ext4() {
    rb_need_cluster
    rb_start rb
    VMT_EXT4_TREE=${VMT_EXT4_TREE:-/usr/include/linux} ex_ext4 /dev/mapper/rb
    ex_stop rb rb
}

# What dmuser-rbd writes, krbd reads byte for byte, and the other way round: the image is
# Ceph's own, not a format of ours. Write-zeroes and discard go through too.
t_krbd() {
    rb_need_cluster
    vm_modload rbd || fail "cannot load the rbd module"
    dd if=/dev/urandom of=/tmp/data bs=1M count=8 status=none
    rb_start rb
    dd if=/tmp/data of=/dev/mapper/rb bs=1M seek=3 oflag=direct conv=fsync status=none ||
        fail "dd to the device"
    # Zero 1 MiB in the middle (WRITE_ZEROES: rbd_aio_write_zeroes), as the reference does.
    fallocate -z -o 5M -l 1M /dev/mapper/rb || fail "fallocate -z on the device"
    dd if=/dev/zero of=/tmp/data bs=1M seek=2 count=1 conv=notrunc status=none
    cmp <(dd if=/dev/mapper/rb bs=1M skip=3 count=8 iflag=direct status=none) /tmp/data ||
        fail "dmuser-rbd does not read back what it wrote"
    # Two whole 4 MiB objects: librbd removes them, so the range reads as zeros (a partial
    # object's discard may leave data, which DISCARD allows).
    dd if=/dev/urandom of=/dev/mapper/rb bs=1M seek=96 count=8 oflag=direct conv=fsync status=none ||
        fail "dd to the range to discard"
    blkdiscard -f -o 96M -l 8M /dev/mapper/rb || fail "blkdiscard on the device"
    ex_stop rb rb
    local krbd
    krbd=$(run_bounded 120 rbd device map -o noudev "rbd/$RB_IMAGE") || fail "rbd device map"
    echo "krbd: $krbd"
    [ -b "$krbd" ] || fail "rbd device map printed '$krbd', not a block device"
    cmp <(dd if="$krbd" bs=1M skip=3 count=8 iflag=direct status=none) /tmp/data ||
        { run_bounded 60 rbd device unmap -o noudev "$krbd"; fail "krbd reads other bytes than dmuser-rbd wrote"; }
    cmp -n 8M <(dd if="$krbd" bs=1M skip=96 count=8 iflag=direct status=none) /dev/zero ||
        { run_bounded 60 rbd device unmap -o noudev "$krbd"; fail "krbd does not read zeros where dmuser-rbd discarded"; }
    dd if=/dev/urandom of=/tmp/data2 bs=1M count=4 status=none
    dd if=/tmp/data2 of="$krbd" bs=1M seek=20 oflag=direct conv=fsync status=none ||
        fail "dd to krbd"
    run_bounded 60 rbd device unmap -o noudev "$krbd" || fail "rbd device unmap"
    rb_start rb
    cmp <(dd if=/dev/mapper/rb bs=1M skip=20 count=4 iflag=direct status=none) /tmp/data2 ||
        fail "dmuser-rbd reads other bytes than krbd wrote"
    ex_stop rb rb
    rm -f /tmp/data /tmp/data2
}

# The OSD stopped under a writer: what happens is either an I/O error or a write that waits;
# never a crash of the daemon. Which one it is gets printed; either way, once the OSD is back
# the device serves again and the data is there.
t_osd_stopped() {
    rb_need_cluster
    dd if=/dev/urandom of=/tmp/data bs=1M count=2 status=none
    rb_start rb
    dd if=/dev/urandom of=/dev/mapper/rb bs=1M count=1 oflag=direct conv=fsync status=none ||
        fail "a write before the OSD stopped failed"
    ceph_osd_stop TERM || fail "the OSD did not stop"
    echo "[$SECONDS s] osd.0 stopped"
    dd if=/tmp/data of=/dev/mapper/rb bs=1M seek=40 oflag=direct conv=fsync status=none &
    local writer=$! outcome rc
    # librbd waits for the OSD (rados_osd_op_timeout is 0): the write should stall, not fail.
    # 5 s without an end is taken as that stall, which must end once the OSD is back.
    if wait_for 5 bash -c "! kill -0 $writer 2>/dev/null"; then
        wait "$writer"
        rc=$?
        outcome="the write ended with status $rc while the OSD was down"
        [ $rc -ne 0 ] || fail "a write succeeded while the only OSD was stopped"
    else
        outcome="the write waited (a stall) while the OSD was down"
    fi
    echo "[$SECONDS s] $outcome"
    daemon_alive rb || fail "dmuser-rbd died while the OSD was down"
    ceph_osd_start || fail "the OSD did not come back"
    echo "[$SECONDS s] osd.0 up again"
    if kill -0 "$writer" 2>/dev/null || [[ "$outcome" == *waited* ]]; then
        wait_for 120 bash -c "! kill -0 $writer 2>/dev/null" ||
            fail "the stalled write did not finish within 120 s of the OSD's return"
        wait "$writer" || fail "the stalled write failed after the OSD came back"
        echo "[$SECONDS s] the stalled write completed after the OSD came back"
    else
        dd if=/tmp/data of=/dev/mapper/rb bs=1M seek=40 oflag=direct conv=fsync status=none ||
            fail "a write after the OSD came back failed"
    fi
    daemon_alive rb || fail "dmuser-rbd died"
    cmp <(dd if=/dev/mapper/rb bs=1M skip=40 count=2 iflag=direct status=none) /tmp/data ||
        fail "the data written across the OSD's absence does not read back"
    ex_stop rb rb
    rm -f /tmp/data
}

# kill -9, then --attach serves the same device: the data written before is there, and it
# takes writes, though the killed client still held the image's exclusive lock: librbd breaks
# it once the OSD has timed out the dead client's watch (osd client watch timeout, 10 s here).
t_kill_attach() {
    rb_need_cluster
    dd if=/dev/urandom of=/tmp/data bs=1M count=8 status=none
    rb_start rb
    dd if=/tmp/data of=/dev/mapper/rb bs=1M seek=50 oflag=direct conv=fsync status=none ||
        fail "dd to the device"
    kill -KILL "$(daemon_pid rb)"
    daemon_wait rb 10
    dmsetup info rb >/dev/null 2>&1 || fail "the device went with the killed daemon"
    ex_one_line_error 'already in use.*--attach' "$EX_BIN/dmuser-rbd" --name rb \
        --conf "$CEPH_CONF" "rbd/$RB_IMAGE"
    rb_start rb2 --attach
    cmp <(dd if=/dev/mapper/rb bs=1M skip=50 count=8 iflag=direct status=none) /tmp/data ||
        fail "data written before kill -9 is not there after --attach"
    echo "[$SECONDS s] writing through the new daemon (the dead client holds the lock)"
    dd if=/dev/urandom of=/tmp/data2 bs=1M count=2 status=none
    run_bounded 120 dd if=/tmp/data2 of=/dev/mapper/rb bs=1M seek=50 oflag=direct conv=fsync \
        status=none || fail "a write after --attach failed or waited over 120 s (status $?)"
    echo "[$SECONDS s] the write completed"
    cmp <(dd if=/dev/mapper/rb bs=1M skip=50 count=2 iflag=direct status=none) /tmp/data2 ||
        fail "the write after --attach does not read back"
    cmp <(dd if=/dev/mapper/rb bs=1M skip=52 count=6 iflag=direct status=none) \
        <(dd if=/tmp/data bs=1M skip=2 count=6 status=none) ||
        fail "the write after --attach changed the blocks around it"
    ex_stop rb2 rb
    rm -f /tmp/data2
    rm -f /tmp/data
}

vm_test ceph-cluster t_cluster 400
vm_test rbd-cli-errors t_cli_errors 180
vm_test rbd-fio-verify t_fio 400
vm_test rbd-ext4 t_ext4 400
vm_test rbd-krbd-agree t_krbd 300
vm_test rbd-osd-stopped t_osd_stopped 400
vm_test rbd-kill9-attach t_kill_attach 200
vm_tests_run
