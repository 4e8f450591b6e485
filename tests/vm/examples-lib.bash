# Helpers shared by tests/vm/examples-*.sh (the example daemons in the VM). Sourced after
# tests/vm/lib.sh; not a test file itself (./dev test vm runs *.sh only).

EX_BIN=${VMT_BUILD:-$DEV_ROOT/build}/examples

# ex_start LABEL DEVICE DAEMON ARGS...: start examples/DAEMON in the background (output in the
# test log, prefixed LABEL|), have the harness clean DEVICE up whatever happens, and wait until
# the daemon has its channels open.
ex_start() {
    local label=$1 dev=$2 daemon=$3
    shift 3
    need_cmd "$EX_BIN/$daemon"
    echo "$dev" >>"$VMT_DEVICES_FILE"
    daemon_start "$label" "$EX_BIN/$daemon" --name "$dev" "$@"
    ex_wait_ready "$label" "$dev"
}

# ex_wait_ready LABEL DEVICE: the node exists and a channel is open (or fail).
ex_wait_ready() {
    wait_for 30 ex_serving "$2" || {
        daemon_alive "$1" || fail "$1 exited before serving /dev/mapper/$2"
        fail "/dev/mapper/$2 not served within 30 s"
    }
}
ex_serving() {
    [ -b "/dev/mapper/$1" ] && dmsetup status "$1" 2>/dev/null | grep -q ' channels=[1-9]'
}

# ex_stop LABEL DEVICE: SIGTERM; the daemon must exit 0 and take the device with it.
ex_stop() {
    local rc
    daemon_stop "$1" TERM
    rc=$?
    [ $rc -eq 0 ] || fail "$1 exited $rc after SIGTERM"
    dmsetup info "$2" >/dev/null 2>&1 && fail "$1 left device $2 behind"
    [ -e "/dev/mapper/$2" ] && fail "$1 left /dev/mapper/$2 behind"
    sed -i "/^$2\$/d" "$VMT_DEVICES_FILE" 2>/dev/null
    return 0
}

# ex_fio DEVICE QD [FIO-OPT...]: fio verify (crc32c) of the whole device, 1 MiB blocks (the
# module's largest request), at queue depth QD.
ex_fio() {
    local dev=$1 qd=$2
    shift 2
    fio_verify "$dev" --bs=1M --iodepth="$qd" "$@" || fail "fio verify QD$qd on $dev"
}

# ex_one_line_error EXPECT CMD...: CMD must fail with exactly one line on stderr containing
# EXPECT (a grep -E pattern), and nothing left behind.
ex_one_line_error() {
    local expect=$1 rc lines
    shift
    "$@" >/tmp/ex.out 2>/tmp/ex.err
    rc=$?
    lines=$(wc -l </tmp/ex.err)
    echo "  [$SECONDS s] \$ ${*##*/}  -> exit $rc: $(cat /tmp/ex.err)"
    [ $rc -ne 0 ] || fail "'$*' succeeded"
    [ "$lines" -eq 1 ] || fail "'$*' printed $lines lines on stderr, expected one"
    grep -Eq "$expect" /tmp/ex.err || fail "'$*' said '$(cat /tmp/ex.err)', expected /$expect/"
}

# ex_blocks FILE: 512-byte blocks allocated to FILE.
ex_blocks() { stat -c %b "$1"; }

# ex_ext4 DEV: lib.sh's ext4 round trip (mkfs.ext4, cp -a /usr/include, umount, fsck -f,
# remount, diff -r), failing the test on any step. VMT_EXT4_TREE=DIR copies another tree.
ex_ext4() {
    ext4_roundtrip "$1" ${VMT_EXT4_TREE:+"$VMT_EXT4_TREE"} || fail "ext4 round trip failed"
}
