# Part 1 compatibility without the SDK: ext4 on a 256 MiB device served by
# tests/legacy-daemon (4 channels) survives mkfs, a copy of /usr/include,
# fsck -f and a remount with identical contents.
source "$DEV_ROOT/tests/vm/lib.sh"

t_ext4() {
    local rc
    need_cmd "$VMT_BUILD/tests/legacy-daemon"
    dm_user_create legacy 524288 legacy || fail "cannot create the user target"
    daemon_start legacy "$VMT_BUILD/tests/legacy-daemon" -v -c 4 legacy 256M
    ext4_roundtrip /dev/mapper/legacy || fail "ext4 round trip failed"
    dm_user_remove legacy || fail "dmsetup remove failed"
    daemon_wait legacy 10
    rc=$?
    [ $rc -eq 0 ] || fail "the daemon exited $rc after the target was removed (want 0 on ENOTBLK)"
}

vm_test ext4-round-trip t_ext4 300
vm_tests_run
