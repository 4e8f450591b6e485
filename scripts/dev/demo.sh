# ./dev demo: build everything, boot the VM, serve an ext4 file system from dmuser-ramdisk,
# write and read files on it, print a summary, stop cleanly. demo_guest is the part that runs
# inside the VM.
dev_demo() {
    need_pkgs "${VM_PKGS[@]}"
    meson_build build
    # shellcheck source=scripts/dev/vm.sh
    source "$DEV_ROOT/scripts/dev/vm.sh"
    say "booting the VM (QEMU, Debian's kernel, the dm-user module loaded)"
    # The demo's dd figure is the kernel's as it ships: no poisoning.
    VM_MEMDEBUG='' VMT_BUILD="$DEV_ROOT/build" dev_vm --timeout 600 -- \
        bash -c 'source "$DEV_ROOT/scripts/dev/demo.sh" && demo_guest'
}

demo_guest() {
    set -uo pipefail
    source "$DEV_ROOT/tests/vm/lib.sh"
    local bin=$VMT_BUILD/examples name=demo size=512M mnt=/tmp/demo-mnt log=/tmp/demo-daemon.log
    local step=0
    progress() {
        step=$((step + 1))
        printf '\033[1;34m[%d/8]\033[0m %s\n' "$step" "$*"
    }
    bail() {
        printf '\033[1;31mdemo failed:\033[0m %s\n' "$*"
        [ -f "$log" ] && sed 's/^/  daemon| /' "$log"
        umount "$mnt" 2>/dev/null
        [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid"
        exit 1
    }

    progress "dm-user target: $(dmsetup targets | awk '$1 == "user" { print $2 }')"
    progress "starting dmuser-ramdisk --name $name --size $size --threads 2"
    "$bin/dmuser-ramdisk" --name "$name" --size "$size" --threads 2 --stats 30 >"$log" 2>&1 &
    local pid=$!
    wait_for 30 test -b "/dev/mapper/$name" || bail "/dev/mapper/$name did not appear"
    wait_for 10 grep -q serving "$log" || bail "the daemon did not start serving"
    sed 's/^/  daemon| /' "$log"

    progress "mkfs.ext4 /dev/mapper/$name and mount it on $mnt"
    vm_modload ext4 || bail "cannot load ext4"
    mkfs.ext4 -q -F "/dev/mapper/$name" || bail "mkfs.ext4 failed"
    mkdir -p "$mnt"
    mount "/dev/mapper/$name" "$mnt" || bail "mount failed"

    progress "copying /usr/include/linux and writing a 128 MiB file (dd, fsync)"
    cp -a /usr/include/linux "$mnt/" || bail "cp failed"
    local files
    files=$(find "$mnt/linux" -type f | wc -l)
    local wrote read
    wrote=$(dd if=/dev/zero of="$mnt/big" bs=1M count=128 conv=fsync 2>&1 | tail -n1)
    echo "  write: $wrote"

    progress "dropping caches, reading everything back"
    echo 3 >/proc/sys/vm/drop_caches
    read=$(dd if="$mnt/big" of=/dev/null bs=1M 2>&1 | tail -n1)
    echo "  read:  $read"
    diff -r /usr/include/linux "$mnt/linux" >/dev/null || bail "copied files differ"

    progress "file system and device state"
    df -h "$mnt" | sed 's/^/  /'
    echo "  dmsetup status: $(dmsetup status "$name")"
    local used
    used=$(df -h --output=used "$mnt" | tail -n1 | tr -d ' ')

    progress "unmounting, stopping the daemon with SIGTERM"
    umount "$mnt" || bail "umount failed"
    kill -TERM "$pid"
    wait "$pid"
    local rc=$?
    [ $rc -eq 0 ] || bail "the daemon exited $rc"
    dmsetup info "$name" >/dev/null 2>&1 && bail "the device is still there"
    tail -n 4 "$log" | sed 's/^/  daemon| /'

    progress "summary"
    local stats
    stats=$(grep 'stopped; read' "$log" | sed 's/.*stopped; //')
    printf '  %-16s %s\n' \
        device "/dev/mapper/$name (ext4 on dm-user, served by dmuser-ramdisk, 2 threads)" \
        size "$size" \
        written "$files files of /usr/include/linux (diff -r equal) + a 128 MiB file; $used used" \
        "dd write" "$(echo "$wrote" | awk -F, '{ print $NF }' | sed 's/^ //') (128 MiB, fsync)" \
        "dd read" "$(echo "$read" | awk -F, '{ print $NF }' | sed 's/^ //') (128 MiB, cold cache)" \
        "daemon stats" "$stats" \
        shutdown "SIGTERM: device removed, daemon exited 0"
}
