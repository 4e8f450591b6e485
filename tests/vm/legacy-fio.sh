# Part 1 compatibility without the SDK: tests/legacy-daemon (blocking
# header-then-payload I/O, one thread per channel) serves a 256 MiB device
# that fio fills with crc32c-verified random writes and reads back, at QD1
# and QD32, over 1 and 4 channels. Removing the device must end the daemon
# cleanly (ENOTBLK, exit 0).
source "$DEV_ROOT/tests/vm/lib.sh"

LEGACY_SECTORS=524288 # 256 MiB

# legacy_fio CHANNELS IODEPTH
legacy_fio() {
    local channels=$1 qd=$2 rc
    need_cmd "$VMT_BUILD/tests/legacy-daemon"
    dm_user_create legacy $LEGACY_SECTORS legacy || fail "cannot create the user target"
    daemon_start legacy "$VMT_BUILD/tests/legacy-daemon" -v -c "$channels" legacy 256M
    fio_verify /dev/mapper/legacy --iodepth="$qd" ||
        fail "fio verify failed at QD$qd over $channels channel(s)"
    daemon_alive legacy || fail "the daemon died during the run"
    dm_user_remove legacy || fail "dmsetup remove failed"
    daemon_wait legacy 10
    rc=$?
    [ $rc -eq 0 ] || fail "the daemon exited $rc after the target was removed (want 0 on ENOTBLK)"
}

t_qd1_1ch() { legacy_fio 1 1; }
t_qd32_1ch() { legacy_fio 1 32; }
t_qd1_4ch() { legacy_fio 4 1; }
t_qd32_4ch() { legacy_fio 4 32; }

vm_test fio-verify-qd1-1ch t_qd1_1ch 240
vm_test fio-verify-qd32-1ch t_qd32_1ch 240
vm_test fio-verify-qd1-4ch t_qd1_4ch 240
vm_test fio-verify-qd32-4ch t_qd32_4ch 240
vm_tests_run
