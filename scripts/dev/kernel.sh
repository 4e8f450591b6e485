# ./dev kernel debug|rt|stock [--path]
#
#   debug  build (once) a 6.1 kernel from Debian's linux-source-6.1 with KASAN
#          (inline), lockdep, DEBUG_ATOMIC_SLEEP/LIST/OBJECTS, kmemleak and
#          fault injection (scripts/dev/kernel-debug.config on top of
#          x86_64_defconfig + kvm_guest.config), for ./dev test --kernel debug;
#   rt     install Debian's PREEMPT_RT kernel and its headers;
#   stock  Debian's default kernel (what every VM run boots unless told).
# --path prints the kernel image's path and release, and builds nothing.
#
# The debug build lives outside the tree, in $DMUSER_KERNEL_CACHE (default
# /var/cache/dm-user/kernel) under a hash of everything that decides it
# (source package version, compiler, config fragment, this file's build
# steps), so a second run starts at once and a changed fragment builds anew.
# Its modules are installed there too, and /lib/modules/RELEASE links to
# them, so the guest (which sees the host's root) and `make M=` find them.
# The build runs under nice -n 19; its log is BUILD/make.log, and one
# progress line a minute tells how far it is.

KERNEL_CACHE=${DMUSER_KERNEL_CACHE:-/var/cache/dm-user/kernel}
KERNEL_DEBUG_FRAGMENT="$DEV_ROOT/scripts/dev/kernel-debug.config"
# Bump when the build steps below change what they produce.
KERNEL_DEBUG_LAYOUT=debug-1
KERNEL_BUILD_PKGS=(linux-source-6.1 make gcc bc bison flex libelf-dev libssl-dev xz-utils cpio kmod)

# kernel_debug_key: the cache key of the debug kernel, 16 hex digits.
kernel_debug_key() {
    {
        echo "$KERNEL_DEBUG_LAYOUT"
        dpkg-query -W -f='${Version}\n' linux-source-6.1 2>/dev/null || echo none
        gcc --version | head -n 1
        cat "$KERNEL_DEBUG_FRAGMENT"
    } | sha256sum | cut -c1-16
}

# kernel_debug_dir: where the debug kernel for the current key lives.
kernel_debug_dir() {
    echo "$KERNEL_CACHE/$(kernel_debug_key)"
}

# kernel_debug_source: the unpacked linux-source-6.1, shared by every key.
kernel_debug_source() {
    local ver src tmp
    ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
    src="$KERNEL_CACHE/src/linux-source-$ver"
    if [ ! -f "$src/Makefile" ]; then
        say "unpacking linux-source-6.1 $ver into $src"
        mkdir -p "$KERNEL_CACHE/src"
        tmp=$(mktemp -d "$KERNEL_CACHE/src/unpack.XXXXXX")
        tar -C "$tmp" -xJf /usr/src/linux-source-6.1.tar.xz ||
            die "cannot unpack /usr/src/linux-source-6.1.tar.xz"
        rm -rf "$src"
        mv "$tmp/linux-source-6.1" "$src" || die "unexpected layout in linux-source-6.1.tar.xz"
        rmdir "$tmp"
    fi
    echo "$src"
}

# kernel_debug_config SRC OUT KEY: the .config in OUT; every =y/=m line of
# the fragment must survive olddefconfig.
kernel_debug_config() {
    local src=$1 out=$2 key=$3 frag
    frag="$out/fragment.config"
    {
        cat "$KERNEL_DEBUG_FRAGMENT"
        echo "CONFIG_LOCALVERSION=\"-dmuser-debug-${key:0:8}\""
        echo "# CONFIG_LOCALVERSION_AUTO is not set"
    } >"$frag"
    if ! {
        make -C "$src" O="$out" x86_64_defconfig &&
            make -C "$src" O="$out" kvm_guest.config &&
            "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$frag" &&
            make -C "$src" O="$out" olddefconfig
    } >"$out/config.log" 2>&1; then
        die "kernel config failed (log: $out/config.log)"
    fi
    local line name bad=0
    while read -r line; do
        name=${line%%=*}
        if ! grep -qx -- "$line" "$out/.config"; then
            warn "the debug config lost $line (now: $(grep -E "^$name=|^# $name is not set" "$out/.config" || echo absent))"
            bad=1
        fi
    done < <(grep -E '^CONFIG_[A-Z0-9_]+=[ym]$' "$KERNEL_DEBUG_FRAGMENT")
    [ "$bad" = 0 ] || die "the debug kernel's config does not hold what scripts/dev/kernel-debug.config asks for"
}

# kernel_progress LOG OBJ_EXPECTED START: one line a minute while make runs.
kernel_progress() {
    local log=$1 expected=$2 start=$3 n last pct
    while sleep 60; do
        n=$(grep -cE '^  (CC|AS)( \[M\])? ' "$log" 2>/dev/null || true)
        last=$(grep -E '^  [A-Z]+' "$log" 2>/dev/null | tail -n 1 | awk '{print $NF}')
        if [ "$expected" -gt 0 ]; then
            pct=$((n * 100 / expected))
            [ "$pct" -gt 99 ] && pct=99
            say "kernel build: ${pct}% ($n of ~$expected objects) after $(((SECONDS - start) / 60)) min; at $last"
        else
            say "kernel build: $n objects after $(((SECONDS - start) / 60)) min; at $last"
        fi
    done
}

# kernel_debug_build: build and install the debug kernel unless cached.
# Sets KERNEL_IMAGE and KERNEL_RELEASE.
kernel_debug_build() {
    local dir key
    key=$(kernel_debug_key)
    dir="$KERNEL_CACHE/$key"
    if [ -f "$dir/done" ]; then
        kernel_debug_link "$dir"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "./dev kernel debug installs into $KERNEL_CACHE and /lib/modules: run it as root"
    need_pkgs "${KERNEL_BUILD_PKGS[@]}"
    # The key holds linux-source-6.1's version, known only once the package is installed:
    # a key made before would name a cache that the next run, finding it installed, misses.
    key=$(kernel_debug_key)
    dir="$KERNEL_CACHE/$key"
    mkdir -p "$KERNEL_CACHE"
    local lock
    exec {lock}>"$KERNEL_CACHE/build.lock"
    if ! flock -n "$lock"; then
        say "another debug kernel build holds $KERNEL_CACHE/build.lock: waiting for it"
        flock "$lock"
    fi
    if [ -f "$dir/done" ]; then
        exec {lock}>&-
        kernel_debug_link "$dir"
        return 0
    fi
    local src
    src=$(kernel_debug_source)
    mkdir -p "$dir/build"
    say "configuring the debug kernel in $dir/build"
    kernel_debug_config "$src" "$dir/build" "$key"
    local jobs expected=0 start=$SECONDS
    jobs=$(($(nproc) + 1))
    [ -f "$KERNEL_CACHE/objects-$KERNEL_DEBUG_LAYOUT" ] && expected=$(cat "$KERNEL_CACHE/objects-$KERNEL_DEBUG_LAYOUT")
    say "building the debug kernel (nice -n 19 make -j$jobs; log: $dir/build/make.log; 74 min on 2 cores shared at load 15; an idle host is faster)"
    kernel_progress "$dir/build/make.log" "$expected" "$start" &
    local progress=$!
    local rc=0
    # With autogroup scheduling (Debian's default), nice ranks processes only within
    # one session: a test run in another session would get no more CPU than this build.
    # So make runs in a session of its own whose autogroup is niced, and is stopped with
    # us on Ctrl-C.
    setsid bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null; exec nice -n 19 make "$@"' make \
        -C "$src" O="$dir/build" -j"$jobs" bzImage modules >"$dir/build/make.log" 2>&1 &
    local make_pid=$!
    trap 'kill -- -"$make_pid" 2>/dev/null' INT TERM
    wait "$make_pid" || rc=$?
    trap - INT TERM
    kill "$progress" 2>/dev/null
    wait "$progress" 2>/dev/null || true
    if [ "$rc" != 0 ]; then
        grep -E 'error|Error' "$dir/build/make.log" | head -n 30 >&2
        die "the debug kernel failed to build (log: $dir/build/make.log)"
    fi
    grep -cE '^  (CC|AS)( \[M\])? ' "$dir/build/make.log" >"$KERNEL_CACHE/objects-$KERNEL_DEBUG_LAYOUT" || true
    local rel
    rel=$(cat "$dir/build/include/config/kernel.release")
    rm -rf "$dir/mod"
    nice -n 19 make -C "$src" O="$dir/build" INSTALL_MOD_PATH="$dir/mod" INSTALL_MOD_STRIP=1 \
        modules_install >"$dir/build/modules_install.log" 2>&1 ||
        die "modules_install failed (log: $dir/build/modules_install.log)"
    ln -sfn "$dir/build" "$dir/mod/lib/modules/$rel/build"
    cp "$dir/build/arch/x86/boot/bzImage" "$dir/vmlinuz"
    echo "$rel" >"$dir/release"
    echo "$(((SECONDS - start) / 60)) min" >"$dir/build-time"
    touch "$dir/done"
    exec {lock}>&-
    say "debug kernel $rel built in $(((SECONDS - start) / 60)) min: $dir"
    kernel_debug_link "$dir"
}

# kernel_debug_link DIR: /lib/modules/RELEASE -> DIR's modules; sets
# KERNEL_IMAGE and KERNEL_RELEASE.
kernel_debug_link() {
    local dir=$1 rel
    rel=$(cat "$dir/release")
    if [ "$(readlink "/lib/modules/$rel" 2>/dev/null)" != "$dir/mod/lib/modules/$rel" ]; then
        as_root ln -sfn "$dir/mod/lib/modules/$rel" "/lib/modules/$rel" ||
            die "cannot link /lib/modules/$rel to $dir"
    fi
    KERNEL_IMAGE="$dir/vmlinuz"
    KERNEL_RELEASE=$rel
}

# kernel_rt_release: the newest installed Debian PREEMPT_RT kernel.
kernel_rt_release() {
    local d ver best=
    for d in /lib/modules/*-rt-amd64; do
        [ -f "$d/modules.dep" ] || continue
        ver=${d#/lib/modules/}
        if [ -z "$best" ] || dpkg --compare-versions "$ver" gt "$best"; then best=$ver; fi
    done
    echo "$best"
}

# kernel_rt_install: Debian's RT kernel and headers. Sets KERNEL_IMAGE and
# KERNEL_RELEASE.
kernel_rt_install() {
    need_pkgs linux-image-rt-amd64 linux-headers-rt-amd64
    local rel
    rel=$(kernel_rt_release)
    [ -n "$rel" ] || die "linux-image-rt-amd64 is installed but no /lib/modules/*-rt-amd64 has modules.dep"
    KERNEL_RELEASE=$rel
    # dpkg-divert may have moved the image (so a /boot/vmlinuz-*-amd64 glob
    # that predates this file does not pick it up); ask dpkg where it is.
    KERNEL_IMAGE=$(dpkg-divert --truename "/boot/vmlinuz-$rel")
    [ -f "$KERNEL_IMAGE" ] || die "no image for $rel at $KERNEL_IMAGE"
}

# kernel_select NAME: set KERNEL_IMAGE and KERNEL_RELEASE for stock, debug
# (built if missing) or rt (installed if missing).
kernel_select() {
    case "$1" in
        stock | "")
            KERNEL_RELEASE=$(vm_kernel_version) || exit 1
            KERNEL_IMAGE="/boot/vmlinuz-$KERNEL_RELEASE"
            ;;
        debug) kernel_debug_build ;;
        rt) kernel_rt_install ;;
        *) die "unknown kernel '$1' (stock, debug or rt)" ;;
    esac
}

dev_kernel() {
    local which=${1:-} path=0
    case "${2:-}" in
        --path) path=1 ;;
        "") ;;
        *) which=help ;;
    esac
    case "$which" in
        debug | rt | stock) ;;
        *)
            echo "usage: ./dev kernel debug|rt|stock [--path]   build or install a kernel for ./dev test --kernel NAME" >&2
            [ "$which" = -h ] || [ "$which" = --help ] && return 0
            exit 2
            ;;
    esac
    if [ "$path" = 1 ] && [ "$which" = debug ]; then
        local dir
        dir=$(kernel_debug_dir)
        [ -f "$dir/done" ] || die "no debug kernel for this config yet ($dir): run ./dev kernel debug"
        echo "$dir/vmlinuz $(cat "$dir/release")"
        return 0
    fi
    kernel_select "$which"
    if [ "$path" = 1 ]; then
        echo "$KERNEL_IMAGE $KERNEL_RELEASE"
    else
        say "kernel $which: $KERNEL_RELEASE ($KERNEL_IMAGE)"
    fi
}

# vm.sh's helpers (vm_kernel_version), unless vm.sh is what sourced us.
if ! declare -F vm_run >/dev/null; then
    # shellcheck source=scripts/dev/vm.sh
    source "$DEV_ROOT/scripts/dev/vm.sh"
fi
