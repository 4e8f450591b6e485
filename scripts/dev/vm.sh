# ./dev vm [--mem SIZE] [--timeout SECS] [--no-module] [--kernel NAME] [--] CMD...
#
# Boots Debian's own kernel (or --kernel debug|rt: scripts/dev/kernel.sh) in QEMU with a tiny busybox initramfs that mounts
# the host's root read-only over 9p and chroots into it, loads dm-mod and a
# freshly built kernel/dm-user, runs CMD as root in the current directory,
# streams its output, and exits with CMD's status. A kernel WARNING, BUG,
# Oops, hung task (and friends) in the guest's dmesg fails the run.
#
# Exit status: CMD's status; 1 if CMD succeeded but the kernel log is bad;
# 124 if CMD ran out of time; 125 if the guest died (panic, boot failure)
# before CMD finished. Scripts that source this file can call vm_run and
# read VM_STATUS / VM_DMESG_BAD / VM_JOB themselves (see test-vm.sh).
#
# The guest side: scripts/dev/vm-init (initramfs /init) and
# scripts/dev/vm-guest.sh (runs in the chroot); guest helpers for tests and
# commands: tests/vm/lib.sh.

VM_DIR="$DEV_ROOT/.vm"
# What the guest side uses beyond VM_PKGS (lib.sh): ps/pkill/sysctl, setsid/
# flock/dmesg; VM tests also drive nbd, and a one-node Ceph cluster for dmuser-rbd
# (tests/vm/ceph-lib.bash: the daemons, the rbd CLI and krbd's mapping, rbd-nbd).
VM_GUEST_PKGS=(procps util-linux nbdkit nbd-client ceph-mon ceph-osd ceph-common rbd-nbd)
# Modules the initramfs needs to reach the host's root over virtio 9p.
VM_INITRAMFS_MODULES=(virtio_pci 9pnet_virtio 9p)
# Kernel log lines that fail a run (one list for host and guest:
# scripts/dev/kernel-log-bad.txt). Hung tasks count: nothing we test may
# block for minutes.
VM_DMESG_BAD_RE=$(grep -Ev '^(#|$)' "$DEV_ROOT/scripts/dev/kernel-log-bad.txt" | paste -sd'|')

# vm_kernel_version: the stock Debian kernel the guest boots by default, one
# with both /boot/vmlinuz-VER and /lib/modules/VER (newest if several). The
# PREEMPT_RT flavour (-rt-amd64) is not stock: it is ./dev test --kernel rt.
vm_kernel_version() {
    local k ver best=
    for k in /boot/vmlinuz-*-amd64; do
        [ -e "$k" ] || continue
        ver=${k#/boot/vmlinuz-}
        [[ "$ver" == *-rt-amd64 ]] && continue
        [ -f "/lib/modules/$ver/modules.dep" ] || continue
        if [ -z "$best" ] || dpkg --compare-versions "$ver" gt "$best"; then best=$ver; fi
    done
    [ -n "$best" ] || die "no kernel with both /boot/vmlinuz-VER and /lib/modules/VER (is linux-image-amd64 installed?)"
    echo "$best"
}

# vm_module_closure VER NAME...: the .ko paths (relative to /lib/modules/VER)
# that load NAME... in dependency order; "MISSING NAME" for one that is
# neither a module nor built in (a built-in one needs no loading).
vm_module_closure() {
    local ver=$1 line name
    shift
    while read -r line; do
        if [[ "$line" == MISSING\ * ]]; then
            name=${line#MISSING }
            grep -Eq "/${name//_/[-_]}\.ko" "/lib/modules/$ver/modules.builtin" 2>/dev/null && continue
        fi
        echo "$line"
    done < <(awk -v want="$*" -f "$DEV_ROOT/scripts/dev/modules-closure.awk" "/lib/modules/$ver/modules.dep")
}

# vm_kernel: resolve VM_KERNEL (stock by default; debug, rt: ./dev kernel)
# once, into VM_KVER (the release), VM_VMLINUZ (its image) and VM_KERNEL_APPEND
# (its command-line options: the memory debugging below).
#
# The stock and RT kernels are Debian's, which have SLUB_DEBUG and
# PAGE_POISONING built in but off: slub_debug=FZP turns on slab sanity
# checks, red zones and poisoning, page_poison=1 poisons freed pages and
# checks the poison when they are handed out again, so a use-after-free
# becomes a report in the kernel log (which fails the test) instead of
# silent corruption. U (who allocated and freed each object) would name the
# culprit in the report, but costs as much again as the rest: add it to
# diagnose (VM_MEMDEBUG="slub_debug=FZPU page_poison=1"). tests/vm/README.md
# has the figures.
# The debug kernel has KASAN, which checks every access: no slub_debug there.
# VM_MEMDEBUG overrides the options (empty: none).
VM_MEMDEBUG_STOCK="slub_debug=FZP page_poison=1"
vm_kernel() {
    [ -n "${VM_KVER:-}" ] && [ "${VM_KERNEL_RESOLVED:-}" = "${VM_KERNEL:-stock}" ] && return 0
    local memdebug
    kernel_select "${VM_KERNEL:-stock}"
    VM_KVER=$KERNEL_RELEASE
    VM_VMLINUZ=$KERNEL_IMAGE
    case "${VM_KERNEL:-stock}" in
        debug) memdebug= ;;
        *) memdebug=$VM_MEMDEBUG_STOCK ;;
    esac
    # A lockdep or KASAN report is long: keep the whole log of a test file.
    VM_KERNEL_APPEND="log_buf_len=8M"
    memdebug=${VM_MEMDEBUG-$memdebug}
    [ -n "$memdebug" ] && VM_KERNEL_APPEND+=" $memdebug"
    VM_KERNEL_RESOLVED=${VM_KERNEL:-stock}
    export VM_KVER VM_VMLINUZ VM_KERNEL_APPEND VM_KERNEL_RESOLVED
}

# vm_initramfs VER: set VM_INITRD to a cached initramfs for VER, rebuilt
# when its inputs (init script, busybox, modules) change.
vm_initramfs() {
    local ver=$1
    local out="$VM_DIR/initramfs-$ver.cpio.gz" key mods m lock
    VM_INITRD=$out
    exec {lock}>"$VM_DIR/initramfs.lock"
    flock "$lock"
    mods=$(vm_module_closure "$ver" "${VM_INITRAMFS_MODULES[@]}")
    if grep -q '^MISSING' <<<"$mods"; then die "initramfs: modules not found in /lib/modules/$ver: $(grep '^MISSING' <<<"$mods" | tr '\n' ' ')"; fi
    key=$( {
        # Bump the tag when the layout below changes.
        echo "layout-1 $ver ${VM_INITRAMFS_MODULES[*]}"
        cat "$DEV_ROOT/scripts/dev/vm-init"
        stat -c '%n %s %Y' /bin/busybox
        for m in $mods; do stat -c '%n %s %Y' "/lib/modules/$ver/$m"; done
    } | sha256sum | cut -d' ' -f1)
    if [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
        exec {lock}>&-
        return
    fi
    say "building initramfs for $ver" 
    local root
    root=$(mktemp -d "$VM_DIR/initramfs.XXXXXX")
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,host,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    local a
    for a in sh mount umount mkdir insmod chroot poweroff sleep cat echo ls; do
        ln -s busybox "$root/bin/$a"
    done
    : >"$root/modules.order"
    for m in $mods; do
        local base=${m##*/} src="/lib/modules/$ver/$m"
        case "$base" in
            *.ko.xz) xz -dc "$src" >"$root/lib/modules/${base%.xz}" && base=${base%.xz} ;;
            *.ko.zst) zstd -qdc "$src" >"$root/lib/modules/${base%.zst}" && base=${base%.zst} ;;
            *.ko.gz) gzip -dc "$src" >"$root/lib/modules/${base%.gz}" && base=${base%.gz} ;;
            *) cp "$src" "$root/lib/modules/$base" ;;
        esac || die "initramfs: cannot unpack $src"
        echo "$base" >>"$root/modules.order"
    done
    install -m 755 "$DEV_ROOT/scripts/dev/vm-init" "$root/init"
    # Kernel module autoload runs /sbin/modprobe in the initramfs; hand it to
    # the host's modprobe inside the chroot, which knows /lib/modules.
    printf '#!/bin/sh\nexec /bin/chroot /host /sbin/modprobe "$@"\n' >"$root/sbin/modprobe"
    chmod 755 "$root/sbin/modprobe"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp" ||
        die "initramfs: cpio failed"
    mv "$out.tmp" "$out"
    echo "$key" >"$out.key"
    rm -rf "$root"
    exec {lock}>&-
}

# vm_build_module VER: build kernel/dm-user against VER's headers and set
# VM_KO to the .ko, or to nothing when the module's tree has no Makefile yet.
vm_build_module() {
    local ver=$1 src="$DEV_ROOT/kernel/dm-user" log="$VM_DIR/module-build.log"
    VM_KO=
    if [ ! -f "$src/Makefile" ]; then
        warn "kernel/dm-user has no Makefile yet: booting WITHOUT the dm-user module"
        return 0
    fi
    [ -d "/lib/modules/$ver/build" ] ||
        die "no headers for $ver: /lib/modules/$ver/build is missing (install linux-headers-amd64)"
    say "building kernel/dm-user for $ver"
    # One build at a time (several people share this tree); take a private
    # copy of the result under the same lock, so a later rebuild cannot swap
    # the module under a run.
    mkdir -p "$VM_DIR/ko"
    VM_KO="$VM_DIR/ko/dm-user.$BASHPID.ko"
    if ! flock "$VM_DIR/module.lock" bash -c '
        nice make -C "$1" KDIR="/lib/modules/$2/build" >"$3" 2>&1 || exit 2
        ko="$1/dm-user.ko"
        [ -f "$ko" ] || ko=$(find "$1" -maxdepth 2 -name "*.ko" | head -n 1)
        [ -n "$ko" ] || exit 3
        cp "$ko" "$4"' _ "$src" "$ver" "$log" "$VM_KO"; then
        tail -n 40 "$log" >&2
        VM_KO=
        die "kernel/dm-user failed to build, or built no .ko (full log: .vm/module-build.log)"
    fi
}

# vm_ext4_tree: .vm/usr-include.tar, the tree tests/vm/lib.sh's
# ext4_roundtrip copies: /usr/include without subdirectories over 16 MiB
# (vendored node/llvm headers on a developer's machine). One big file reads
# over 9p in seconds; thousands of small ones take minutes under TCG.
vm_ext4_tree() {
    local out="$VM_DIR/usr-include.tar" lock
    if [ -f "$out" ] && [ -z "$(find /usr/include -newer "$out" -print -quit 2>/dev/null)" ]; then
        return 0
    fi
    exec {lock}>"$VM_DIR/usr-include.lock"
    flock "$lock"
    local -a skip=()
    local kib name
    while read -r kib name; do
        [ "$kib" -gt 16384 ] && skip+=(--exclude="./${name#/usr/include/}")
    done < <(du -sk /usr/include/*/ 2>/dev/null | sed 's|/$||')
    if tar -C /usr/include "${skip[@]}" -cf "$out.tmp" .; then
        mv "$out.tmp" "$out"
    else
        warn "cannot pack /usr/include for the ext4 tests"
    fi
    exec {lock}>&-
}

# vm_accel VER IMAGE: KVM when /dev/kvm really runs a guest, else TCG. An
# open-able /dev/kvm is not enough (nested setups fail at the first vCPU
# run), so boot the kernel once without a root under KVM and cache the verdict.
vm_accel() {
    local ver=$1 image=$2 verdict cache="$VM_DIR/kvm-usable"
    local key
    key="$(uname -r) $(qemu-system-x86_64 --version | head -n1) $ver"
    if [ -n "${VM_NO_KVM:-}" ] || [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
        verdict=no
    elif [ -f "$cache" ] && [ "$(head -n1 "$cache")" = "$key" ]; then
        verdict=$(sed -n 2p "$cache")
    else
        verdict=no
        if timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot \
            -nodefaults -serial stdio -kernel "$image" \
            -append "console=ttyS0 panic=-1" </dev/null 2>&1 | grep -q 'Kernel panic'; then
            verdict=yes
        fi
        printf '%s\n%s\n' "$key" "$verdict" >"$cache"
    fi
    if [ "$verdict" = yes ]; then
        echo "-accel kvm -cpu host"
    else
        # QEMU's default CPU model. `-cpu max` advertises ERMS, so the guest
        # copies to and from userspace with `rep movsb`, which TCG emulates
        # about five times slower than the plain moves it uses otherwise:
        # 1 MiB reads through a daemon ran at 380 MiB/s instead of 1,900.
        echo "-accel tcg,thread=multi -cpu ${VM_CPU:-qemu64}"
    fi
}

# The serial console minus carriage returns, the firmware's banner and
# terminal escapes, line by line so output streams.
vm_console_filter() {
    sed -u -e 's/\r$//' -e 's/\x1bc//g' -e 's/\x1b\[[?0-9;]*[a-zA-Z]//g' \
        -e '/^SeaBIOS (version/d' -e 's/^Booting from ROM\.*//' -e '/^$/d' -e '/reboot: Power down$/d'
}

# vm_run [--mem SIZE] [--timeout SECS] [--no-module] [--quiet] -- CMD...
# Boot, run CMD, power off. Sets VM_STATUS (CMD's status, 124 timeout, 125
# guest died), VM_REASON (one line), VM_DMESG_BAD (1 if the kernel log is
# bad), VM_SECONDS, VM_JOB (the job directory: console.log, dmesg, status,
# and what the guest wrote to /run/vmjob; the caller removes it with
# vm_job_cleanup). Output streams to stdout; --quiet shows only the
# "vmtest: " progress lines of tests/vm/lib.sh. VM_KO_PREBUILT (set, maybe
# empty) skips the module build.
vm_run() {
    local mem=2G timeout=${VM_TIMEOUT:-900} module=1 quiet=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --mem) mem=$2; shift 2 ;;
            --mem=*) mem=${1#*=}; shift ;;
            --timeout) timeout=$2; shift 2 ;;
            --timeout=*) timeout=${1#*=}; shift ;;
            --no-module) module=0; shift ;;
            --kernel) VM_KERNEL=$2; shift 2 ;;
            --kernel=*) VM_KERNEL=${1#*=}; shift ;;
            --quiet) quiet=1; shift ;;
            --) shift; break ;;
            -*) die "./dev vm: unknown option $1" ;;
            *) break ;;
        esac
    done
    [ $# -gt 0 ] || die "usage: ./dev vm [--mem SIZE] [--timeout SECS] [--no-module] [--kernel NAME] [--] CMD..."
    [[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout wants seconds, got '$timeout'"
    need_pkgs "${VM_PKGS[@]}" "${VM_GUEST_PKGS[@]}"
    mkdir -p "$VM_DIR/jobs"

    local ver initrd ko=""
    vm_kernel
    ver=$VM_KVER
    vm_initramfs "$ver"
    initrd=$VM_INITRD
    vm_ext4_tree
    if [ "$module" = 1 ] && [ -n "${VM_KO_PREBUILT+set}" ]; then
        ko=$VM_KO_PREBUILT
    elif [ "$module" = 1 ]; then
        vm_build_module "$ver"
        ko=$VM_KO
    fi

    VM_JOB=$(mktemp -d "$VM_DIR/jobs/job.XXXXXX")
    # The guest gets fresh tmpfs on /tmp, /run and /dev/shm, which would hide a tree
    # cloned there (CI may clone anywhere): such a tree gets a share of its own,
    # mounted at the same path.
    local tree_share=
    case "$DEV_ROOT" in
        /tmp/* | /run/* | /dev/shm/*)
            [[ "$DEV_ROOT" =~ ^[A-Za-z0-9_./+-]+$ ]] ||
                die "the guest cannot mount $DEV_ROOT (only [A-Za-z0-9_./+-] in a path under /tmp, /run or /dev/shm)"
            tree_share=$DEV_ROOT
            ;;
    esac
    local cwd=$PWD
    case "$cwd" in
        "$DEV_ROOT" | "$DEV_ROOT"/*) ;;
        /tmp | /tmp/* | /run | /run/* | /dev/shm | /dev/shm/*) warn "the guest has a fresh /tmp and /run: $cwd does not exist there; running in /"; cwd=/ ;;
    esac
    if [ -n "$ko" ]; then
        cp "$ko" "$VM_JOB/dm-user.ko" || die "cannot copy $ko"
        # Our own build's copy is spent; a prebuilt one serves more boots.
        [ -n "${VM_KO_PREBUILT+set}" ] || rm -f "$ko"
    fi
    {
        printf 'VM_KVER=%q\n' "$ver"
        printf 'VM_TIMEOUT=%q\n' "$timeout"
        printf 'VM_CWD=%q\n' "$cwd"
        printf 'VM_MODULE=%q\n' "${ko:+/run/vmjob/dm-user.ko}"
        printf 'VM_MODULE_SRC=%q\n' "kernel/dm-user"
        printf 'DEV_ROOT=%q\n' "$DEV_ROOT"
        # The tests' knobs cross over (VMT_BUILD=build-mine, ...).
        local var
        for var in ${!VMT_@} ${!DMUSER_@}; do printf 'export %s=%q\n' "$var" "${!var}"; done
    } >"$VM_JOB/env"
    {
        printf 'cd -- %q || exit 125\n' "$cwd"
        printf 'exec'
        printf ' %q' "$@"
        printf '\n'
    } >"$VM_JOB/cmd"
    printf 'exec /bin/bash %q /run/vmjob\n' "$DEV_ROOT/scripts/dev/vm-guest.sh" >"$VM_JOB/boot"

    # The guest enforces the timeout itself (and dumps blocked tasks); the
    # host's limit is the backstop for a guest that cannot.
    local host_limit=$((timeout + 120))
    # The host's root may be cached by the guest for the whole boot: exec and
    # lookups over 9p get 1.6-2x faster under TCG (measured: 200 execs, tar of
    # /usr/include/linux). VM_9P_OPTS= (empty) turns it off.
    local nine_p_opts=${VM_9P_OPTS-cache=loose}
    local accel
    accel=$(vm_accel "$ver" "$VM_VMLINUZ")
    local -a accel_args
    read -r -a accel_args <<<"$accel"
    # no_timer_check: on a loaded host, TCG can miss the boot-time check that
    # the IO-APIC timer ticks, and the guest panics with "IO-APIC + timer
    # doesn't work!" before userspace (seen once in 10 boots at load 17).
    local qemu=(qemu-system-x86_64 "${accel_args[@]}" -smp "${VM_SMP:-2}" -m "$mem"
        -nographic -no-reboot -nodefaults -serial stdio
        -kernel "$VM_VMLINUZ" -initrd "$initrd"
        -append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic softlockup_panic=1 no_timer_check rdinit=/init ${VM_KERNEL_APPEND}${VM_APPEND:+ $VM_APPEND}${nine_p_opts:+ vm.9p=$nine_p_opts}"
        -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$VM_JOB,mount_tag=job,security_model=none,multidevs=remap")
    if [ -n "$tree_share" ]; then
        qemu[${#qemu[@]}]=-virtfs
        qemu[${#qemu[@]}]="local,path=$tree_share,mount_tag=tree,security_model=none,readonly=on,multidevs=remap"
        local i
        for i in "${!qemu[@]}"; do
            [ "${qemu[$i]}" = -append ] && qemu[$((i + 1))]+=" vm.tree=$tree_share"
        done
    fi
    [ "$quiet" = 1 ] || say "booting $ver (${VM_KERNEL:-stock} kernel, ${VM_KERNEL_APPEND}; $(grep -q kvm <<<"$accel" && echo KVM || echo TCG), ${VM_SMP:-2} cpus, $mem): $*"
    local start=$SECONDS
    local qemu_rc=0
    if [ "$quiet" = 1 ]; then
        # Only the test runner's progress lines.
        { timeout -k 10 "$host_limit" "${qemu[@]}" </dev/null 2>&1 | vm_console_filter |
            tee "$VM_JOB/console.log" | grep --line-buffered '^vmtest: ' | sed -u 's/^vmtest: /    /'
          qemu_rc=${PIPESTATUS[0]}; } || true
    else
        { timeout -k 10 "$host_limit" "${qemu[@]}" </dev/null 2>&1 | vm_console_filter | tee "$VM_JOB/console.log"
          qemu_rc=${PIPESTATUS[0]}; } || true
    fi
    VM_SECONDS=$((SECONDS - start))

    VM_DMESG_BAD=0
    VM_REASON=
    if [ -f "$VM_JOB/status" ]; then
        VM_STATUS=$(cat "$VM_JOB/status")
        [[ "$VM_STATUS" =~ ^[0-9]+$ ]] || VM_STATUS=125
    else
        VM_STATUS=125
        if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
            VM_REASON="guest hung: killed after ${host_limit} s"
        elif grep -q 'Kernel panic' "$VM_JOB/console.log"; then
            VM_REASON="guest kernel panic: $(grep -m1 'Kernel panic' "$VM_JOB/console.log")"
        else
            VM_REASON="guest died before CMD finished (qemu exit $qemu_rc; see console above)"
        fi
    fi
    # A panic leaves no dmesg file; the console carries what it printed.
    local log="$VM_JOB/dmesg"
    [ -f "$log" ] || log="$VM_JOB/console.log"
    if grep -Eq "$VM_DMESG_BAD_RE" "$log"; then VM_DMESG_BAD=1; fi
    if [ "$VM_STATUS" = 124 ]; then VM_REASON="CMD timed out after ${timeout} s (blocked tasks dumped to the kernel log)"; fi
    if [ "$VM_STATUS" != 125 ] && [ "$VM_STATUS" != 124 ]; then VM_REASON="CMD exited $VM_STATUS"; fi
    if [ "$VM_STATUS" = 125 ] && [ -f "$VM_JOB/status" ]; then
        VM_REASON="guest setup failed: $(grep -m1 '^vm: ' "$VM_JOB/console.log" || echo 'see the console above')"
    fi
    return 0
}

# vm_print_dmesg: the bad part of the guest's kernel log, with context.
vm_print_dmesg() {
    local log="$VM_JOB/dmesg"
    [ -f "$log" ] || log="$VM_JOB/console.log"
    printf '\033[1;31m---- guest kernel log (%s) ----\033[0m\n' "${log##*/}" >&2
    # From 5 lines before the first bad line to the end, at most 200 lines.
    local first
    first=$(grep -En "$VM_DMESG_BAD_RE" "$log" | head -n1 | cut -d: -f1)
    first=$((first > 5 ? first - 5 : 1))
    tail -n +"$first" "$log" | head -n 200 >&2
    printf '\033[1;31m---- end of guest kernel log ----\033[0m\n' >&2
}

vm_job_cleanup() {
    if [ -n "${VM_JOB:-}" ] && [ -z "${VM_KEEP:-}" ]; then rm -rf "$VM_JOB"; fi
    VM_JOB=
}

dev_vm() {
    case "${1:-}" in
        -h | --help | "")
            cat <<'USAGE'
usage: ./dev vm [--mem SIZE] [--timeout SECS] [--no-module] [--kernel NAME] [--] CMD...

Boots Debian's kernel in QEMU (KVM if usable, else TCG) over the host's root
(read-only 9p; fresh tmpfs on /tmp and /run), loads dm-mod and a fresh build
of kernel/dm-user, runs CMD as root in the current directory and exits with
its status. A kernel WARNING/BUG/Oops/hung task fails the run.
  --mem SIZE      guest memory (default 2G)
  --timeout SECS  CMD's time limit (default 900, or $VM_TIMEOUT)
  --no-module     do not build or load kernel/dm-user
  --kernel NAME   stock (default), debug (KASAN, lockdep, kmemleak; built by
                  ./dev kernel debug) or rt (Debian's PREEMPT_RT)
In CMD, `source tests/vm/lib.sh` for helpers (vm_modload brd, dm_user_create...).
Env: VM_KEEP=1 keeps .vm/jobs/job.* ; VM_NO_KVM=1 forces TCG; VM_SMP=N cpus;
     VM_CPU=MODEL the TCG CPU model (default qemu64);
VM_9P_OPTS: 9p mount options for the host's root (default cache=loose; empty: none).
VM_MEMDEBUG: memory-debugging options on the kernel command line (default
     "slub_debug=FZP page_poison=1"; none on the debug kernel; empty: none;
     "slub_debug=FZPU page_poison=1" adds who allocated and freed to a report).
VM_APPEND: more kernel command-line options.
USAGE
            [ -n "${1:-}" ] && return 0
            exit 2
            ;;
    esac
    vm_run "$@"
    local rc=$VM_STATUS
    if [ "$VM_DMESG_BAD" = 1 ]; then
        # A panic's log already streamed by on the console.
        [ -f "$VM_JOB/dmesg" ] && vm_print_dmesg
        warn "the guest kernel log shows a WARNING/BUG/Oops/hung task: run failed"
        [ "$rc" = 0 ] && rc=1
    fi
    if [ "$rc" != 0 ]; then warn "${VM_REASON:-failed} (${VM_SECONDS} s)"; else say "done in ${VM_SECONDS} s"; fi
    vm_job_cleanup
    exit "$rc"
}

# The kernels a run may boot (stock, debug, rt), unless kernel.sh sourced us.
if ! declare -F kernel_select >/dev/null; then
    # shellcheck source=scripts/dev/kernel.sh
    source "$DEV_ROOT/scripts/dev/kernel.sh"
fi
