# Shared helpers for ./dev subcommands. Sourced, never run.

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() {
    printf '\033[1;31merror:\033[0m %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# need_pkgs PKG...: install the Debian packages that are not installed yet.
need_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    if [ -z "${DEV_APT_UPDATED:-}" ]; then
        as_root apt-get update -q >/dev/null || die "apt-get update failed"
        export DEV_APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# Packages to build the C++ tree.
BUILD_PKGS=(g++ meson ninja-build pkg-config liburing-dev libfmt-dev catch2 libzstd-dev liblz4-dev
    libnbd-dev nbdkit librbd-dev)
# Packages for the SDK's libFuzzer targets (tests/fuzz/, scripts/dev/test-fuzz.sh): clang and
# clang 14's libFuzzer runtime. Only build-fuzz/ uses them; the C++ tree builds with g++.
FUZZ_PKGS=(clang libclang-rt-14-dev)
# Packages to build the Debian packages and test them (./dev package, scripts/dev/test-pkg.sh):
# the build and lintian; dkms (dm-user-dkms's dependency), cmake for find_package(dmuser),
# udev for the guest's udevd, systemd for systemd-analyze verify, python3 for the tests' JSON.
PKG_PKGS=(debhelper dh-dkms dpkg-dev fakeroot lintian help2man dkms cmake udev systemd python3)
# Packages to build the module and run it in a VM.
VM_PKGS=(make gcc linux-headers-amd64 linux-image-amd64 qemu-system-x86 busybox-static
    fio dmsetup e2fsprogs kmod cpio gdisk)

# meson_build DIR [meson options...]: configure DIR once, then build it.
meson_build() {
    local dir=$1
    shift
    need_pkgs "${BUILD_PKGS[@]}"
    if [ ! -f "$DEV_ROOT/$dir/build.ninja" ]; then
        say "configuring $dir"
        meson setup "$DEV_ROOT/$dir" "$DEV_ROOT" "$@" >/dev/null ||
            die "meson setup $dir failed"
    fi
    say "building $dir"
    ninja -C "$DEV_ROOT/$dir" >"$DEV_ROOT/$dir/ninja.log" 2>&1 || {
        tail -n 60 "$DEV_ROOT/$dir/ninja.log" >&2
        die "build of $dir failed (full log: $dir/ninja.log)"
    }
}

# Test bookkeeping for ./dev test: every suite reports through these.
DEV_PASSED=0
DEV_FAILED=0
DEV_FAILED_NAMES=()
t_pass() {
    DEV_PASSED=$((DEV_PASSED + 1))
    printf '  \033[32mPASS\033[0m %s\n' "$1"
}
t_fail() {
    DEV_FAILED=$((DEV_FAILED + 1))
    DEV_FAILED_NAMES+=("$1")
    printf '  \033[31mFAIL\033[0m %s\n' "$1"
}
