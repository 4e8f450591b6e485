#!/bin/bash
# Memory pressure, in a 256 MiB guest (./dev soak boots it apart): ext4 on
# dmuser-file takes twice the guest's RAM of fsync'd writes, with
# PR_SET_IO_FLUSHER and mlockall each on and off. The daemon must never
# deadlock against the writeback it serves. Its backing file is on the job
# share (9p, the host's disk): the guest's tmpfs is RAM.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/soak/lib.bash"

# pressure LABEL DAEMON-OPTIONS...: one run; its time is a figure.
pressure() {
    local label=$1 mnt=/tmp/mp-mnt img=/run/vmjob/mp.img mib
    shift
    mib=$(awk '/^MemTotal/ { print int($2 / 1024) * 2 }' /proc/meminfo)
    rm -f "$img"
    local start=$SECONDS rc=0
    example mp dmuser-file --size $((mib + 256))M "$@" "$img"
    local pid=$EXAMPLE_PID
    mkfs.ext4 -q -F /dev/mapper/mp || fail "$label: mkfs"
    mkdir -p "$mnt"
    mount /dev/mapper/mp "$mnt" || fail "$label: mount"
    run_bounded 1200 dd if=/dev/zero of="$mnt/big" bs=1M count="$mib" conv=fsync status=none || rc=$?
    local secs=$((SECONDS - start))
    umount "$mnt" || fail "$label: umount"
    kill -TERM "$pid"
    wait "$pid"
    rm -f "$img"
    echo "vmtest:   memory-pressure: $label wrote $mib MiB in $secs s (dd status $rc)" >/dev/console 2>/dev/null
    PRESSURE+=("${label}_s=$secs" "${label}_dd=$([ "$rc" = 0 ] && echo ok || echo "failed($rc)")")
    [ "$rc" = 0 ] || fail "$label: writing $mib MiB through ext4 did not finish ($rc)"
}

t_memory_pressure() {
    need_cmd "$BIN/dmuser-file" mkfs.ext4
    vm_modload ext4 || fail "cannot load ext4"
    local -a PRESSURE=()
    local mem
    mem=$(awk '/^MemTotal/ { print int($2 / 1024) }' /proc/meminfo)
    pressure flusher_mlock --mlock
    pressure flusher
    pressure mlock --mlock --no-io-flusher
    pressure neither --no-io-flusher
    figure memory-pressure "guest_mib=$mem" "written_mib=$((mem * 2))" "${PRESSURE[@]}" "kernel_complaints=$(complaints)"
}

stest memory-pressure t_memory_pressure 5000
vm_tests_run
