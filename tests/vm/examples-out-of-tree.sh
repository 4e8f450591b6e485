# A daemon built outside the tree against the installed SDK (meson install to a prefix, then
# pkg-config dmuser: scripts/dev/test-host.sh builds examples/out-of-tree/daemon.cpp into
# build/install-test/oot-daemon) serves a real device in the VM.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/examples-lib.bash"

t_out_of_tree() {
    local bin=${VMT_BUILD:-$DEV_ROOT/build}/install-test/oot-daemon
    [ -x "$bin" ] || fail "no $bin: ./dev test host (or ./dev test) builds it from the installed SDK"
    echo oot >>"$VMT_DEVICES_FILE"
    daemon_start oot "$bin" oot 32
    ex_wait_ready oot oot
    ex_fio /dev/mapper/oot 8
    ex_stop oot oot
}

# The README's ramdisk, as printed there (scripts/dev/test-host.sh extracts and builds it):
# it makes the device itself, with no dmsetup line, and removes it on SIGTERM.
t_readme_ramdisk() {
    local bin=${VMT_BUILD:-$DEV_ROOT/build}/install-test/readme-ramdisk
    [ -x "$bin" ] || fail "no $bin: ./dev test host (or ./dev test) builds it from README.md"
    echo rrd >>"$VMT_DEVICES_FILE"
    daemon_start rrd "$bin" rrd 64
    ex_wait_ready rrd rrd
    ex_ext4 /dev/mapper/rrd
    ex_stop rrd rrd
}

vm_test out-of-tree-daemon t_out_of_tree 180
vm_test readme-ramdisk t_readme_ramdisk 300
vm_tests_run
