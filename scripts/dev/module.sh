# ./dev module [--no-sparse]: build kernel/dm-user with W=1 for the host's
# kernel headers (when installed) and for the VM's kernel, then run sparse
# (C=2) over it, and report every warning. Fails on a build error, not on
# warnings; the count is printed so nobody misses them.
source "$DEV_ROOT/scripts/dev/vm.sh"

# module_build VER LOGNAME [make args...]: build for VER; print warnings.
module_build() {
    local ver=$1 name=$2
    shift 2
    local log="$VM_DIR/module-$name.log" src="$DEV_ROOT/kernel/dm-user"
    say "building kernel/dm-user for $ver ($name: ${*:-plain})"
    # Clean first so every file is compiled (and checked) again; under the
    # lock, since the tree is shared.
    if ! flock "$VM_DIR/module.lock" bash -c '
        src=$1 kdir=$2; shift 2
        make -C "$src" KDIR="$kdir" clean >/dev/null 2>&1
        nice make -C "$src" KDIR="$kdir" "$@"' _ "$src" "/lib/modules/$ver/build" "$@" \
        >"$log" 2>&1; then
        grep -E 'error|warning' "$log" | head -n 40 >&2
        die "kernel/dm-user failed to build for $ver (log: .vm/module-$name.log)"
    fi
    local n
    n=$(grep -c 'warning:' "$log" || true)
    if [ "$n" -gt 0 ]; then
        grep -A3 'warning:' "$log" >&2
        warn "$n warning(s) building for $ver ($name); log: .vm/module-$name.log"
    else
        say "no warnings for $ver ($name)"
    fi
    MODULE_WARNINGS=$((MODULE_WARNINGS + n))
}

dev_module() {
    local sparse=1
    case "${1:-}" in
        --no-sparse) sparse=0 ;;
        -h | --help)
            echo "usage: ./dev module [--no-sparse]   W=1 builds for the host's and the VM's kernel, then sparse C=2"
            return 0
            ;;
        "") ;;
        *) die "usage: ./dev module [--no-sparse]" ;;
    esac
    need_pkgs make gcc linux-headers-amd64 linux-image-amd64 kmod
    [ "$sparse" = 1 ] && need_pkgs sparse
    mkdir -p "$VM_DIR"
    [ -f "$DEV_ROOT/kernel/dm-user/Makefile" ] || die "kernel/dm-user has no Makefile yet"
    MODULE_WARNINGS=0
    local vm_ver host_ver
    vm_ver=$(vm_kernel_version) || exit 1
    host_ver=$(uname -r)
    if [ "$host_ver" = "$vm_ver" ]; then
        say "the host runs the VM's kernel ($vm_ver): one build covers both"
    elif [ -d "/lib/modules/$host_ver/build" ]; then
        module_build "$host_ver" host W=1
    else
        # Debian's linux-headers-amd64 is for Debian's kernel; a foreign host
        # kernel (a container's, a CI runner's) has no headers to build against.
        warn "no headers for the host's running kernel $host_ver (/lib/modules/$host_ver/build): host build skipped; the VM's kernel $vm_ver is the one the module runs on"
    fi
    if [ "$sparse" = 1 ]; then
        module_build "$vm_ver" sparse C=2 W=1
    fi
    # Last, so the tree holds the plain W=1 build for the VM's kernel.
    module_build "$vm_ver" vm W=1
    local ko
    ko=$(find "$DEV_ROOT/kernel/dm-user" -maxdepth 2 -name '*.ko' | head -n 1)
    [ -n "$ko" ] && modinfo "$ko" | grep -E '^(filename|version|vermagic|description):' >&2
    if [ "$MODULE_WARNINGS" -gt 0 ]; then
        warn "$MODULE_WARNINGS warning(s) in total"
    else
        say "kernel/dm-user builds warning-free (W=1$([ "$sparse" = 1 ] && echo ', sparse C=2'))"
    fi
}
