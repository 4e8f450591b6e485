# A one-node Ceph cluster in the guest, for dmuser-rbd's tests (and krbd / rbd-nbd beside
# it). Sourced after tests/vm/lib.sh; not a test file itself (./dev test vm runs *.sh only).
#
#   ceph_cluster_start           # mon + OSD on 127.0.0.1, pool "rbd"; returns once it is up
#   ceph_image_create NAME SIZE  # an RBD image (its first write waits for active PGs)
#   ceph_osd_stop / ceph_osd_start
#   ceph_watchers NAME           # `rbd status` watcher lines
#
# What this guest needs (found the hard way, issue 13): cephx off; pool size 1 and
# `osd crush chooseleaf type = 0` (one OSD, one host); bluestore on a brd ramdisk, since tmpfs
# refuses the O_DIRECT bluestore opens its block device with; `osd erasure code plugins`
# empty, because the jerasure plugin the mon preloads dies with SIGILL under qemu64's CPU; no
# mgr (nothing here needs one). The python `ceph` CLI costs 5-10 s a call under TCG: mon
# commands go through tests/rados-mon-command (librados) instead, all in one connection.
# The daemons daemonize (their own session), so a test's cleanup leaves the cluster to the
# next test: one cluster per boot.

CEPH_DIR=/tmp/ceph
export CEPH_CONF=$CEPH_DIR/ceph.conf
CEPH_MON_COMMAND=${VMT_BUILD:-$DEV_ROOT/build}/tests/rados-mon-command
# The OSD's ramdisk: brd allocates pages only as they are written.
CEPH_BRD_MIB=${CEPH_BRD_MIB:-1024}

# ceph_cluster_start: make and start the cluster; 0 once the mon answers and the OSD is up.
ceph_cluster_start() {
    need_cmd ip ceph-mon ceph-osd monmaptool rbd "$CEPH_MON_COMMAND"
    local fsid osd_uuid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    rm -rf "$CEPH_DIR"
    # The guest's init leaves the loopback interface down: every connection to 127.0.0.1
    # would fail (and librados retries it forever).
    ip link set lo up || { echo "ceph_cluster_start: cannot bring lo up" >&2; return 1; }
    mkdir -p "$CEPH_DIR"/{mon,osd/ceph-0,run,log,crash}
    if [ ! -b /dev/ram0 ]; then
        modprobe -S "$VM_KVER" brd rd_nr=1 rd_size=$((CEPH_BRD_MIB * 1024)) ||
            { echo "ceph_cluster_start: cannot load brd" >&2; return 1; }
    fi
    wait_for 10 test -b /dev/ram0 || { echo "ceph_cluster_start: no /dev/ram0" >&2; return 1; }
    cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
mon initial members = a
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
osd erasure code plugins =
mon allow pool size one = true
mon warn on pool no redundancy = false
run dir = $CEPH_DIR/run
admin socket = $CEPH_DIR/run/\$cluster-\$name.asok
pid file = $CEPH_DIR/run/\$cluster-\$name.pid
log file = $CEPH_DIR/log/\$cluster-\$name.log
crash dir = $CEPH_DIR/crash
[mon]
mon data = $CEPH_DIR/mon/\$cluster-\$id
[osd]
osd data = $CEPH_DIR/osd/\$cluster-\$id
osd objectstore = bluestore
bluestore block path = /dev/ram0
# A killed client's watch (and with it its exclusive lock on an image) goes after this many
# seconds without a ping, not the default 30: a test writing after kill -9 waits that long.
osd client watch timeout = 10
EOF
    monmaptool --create --fsid "$fsid" --addv a '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]' \
        "$CEPH_DIR/monmap" >/dev/null || return 1
    ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" ||
        { echo "ceph_cluster_start: ceph-mon --mkfs failed" >&2; return 1; }
    ceph-mon -c "$CEPH_CONF" -i a || { echo "ceph_cluster_start: ceph-mon did not start" >&2; return 1; }
    # The OSD's id, the pool: one librados connection (it waits for the mon to form a quorum).
    run_bounded 120 "$CEPH_MON_COMMAND" "$CEPH_CONF" \
        "{\"prefix\":\"osd new\",\"uuid\":\"$osd_uuid\",\"id\":0}" \
        '{"prefix":"osd pool create","pool":"rbd","pg_num":8,"pgp_num":8}' \
        '{"prefix":"osd pool application enable","pool":"rbd","app":"rbd"}' >/dev/null ||
        { ceph_logs; echo "ceph_cluster_start: mon commands failed" >&2; return 1; }
    ceph-osd -c "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$CEPH_DIR/log/osd-mkfs.out" 2>&1 ||
        { cat "$CEPH_DIR/log/osd-mkfs.out" >&2; echo "ceph_cluster_start: ceph-osd --mkfs failed" >&2; return 1; }
    ceph_osd_start
}

# ceph_osd_start: start osd.0 (after ceph_osd_stop too) and wait until the mon says it is up.
ceph_osd_start() {
    ceph-osd -c "$CEPH_CONF" -i 0 || { ceph_logs; echo "ceph-osd did not start" >&2; return 1; }
    wait_for 120 ceph_osd_up || { ceph_logs; echo "osd.0 not up within 120 s" >&2; return 1; }
}

# ceph_osd_up: 0 when the osdmap has osd.0 up.
ceph_osd_up() {
    "$CEPH_MON_COMMAND" "$CEPH_CONF" '{"prefix":"osd dump","format":"json"}' 2>/dev/null |
        grep -Eq '"osd": *0, *"uuid": *"[^"]*", *"up": *1'
}

# ceph_osd_pid: the running OSD's pid (its pid file).
ceph_osd_pid() { cat "$CEPH_DIR/run/ceph-osd.0.pid" 2>/dev/null; }

# ceph_osd_stop [SIGNAL]: stop osd.0 (TERM) and wait until its process is gone.
ceph_osd_stop() {
    local pid
    pid=$(ceph_osd_pid)
    [ -n "$pid" ] || return 1
    kill "-${1:-TERM}" "$pid"
    wait_for 60 bash -c "! kill -0 $pid 2>/dev/null"
}

# ceph_image_create NAME SIZE: rbd create (Ceph's default image features). It returns once
# the pool's PGs are active, so its success says the cluster serves I/O.
ceph_image_create() {
    run_bounded 240 rbd create --size "$2" "rbd/$1" ||
        { ceph_logs; echo "rbd create rbd/$1 failed" >&2; return 1; }
}

# ceph_watchers NAME: the image's watchers, one "watcher=ADDR client.N cookie=C" a line.
ceph_watchers() {
    run_bounded 60 rbd status "rbd/$1" | grep -o 'watcher=.*'
    return 0
}

# ceph_logs: the end of each daemon's log, for a failed test's log.
ceph_logs() {
    local f
    for f in "$CEPH_DIR"/log/*.log; do
        [ -f "$f" ] || continue
        echo "---- $f (last 15 lines) ----" >&2
        tail -n 15 "$f" >&2
    done
}
