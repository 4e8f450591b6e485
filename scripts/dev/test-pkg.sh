# Package suite for ./dev test (issue 14): the Debian packages as an admin gets them.
#
# Builds the .debs once (./dev package: dpkg-buildpackage, then lintian), installs them on
# this host with apt (a CI machine is disposable; the VM's root is this host's, so the guest
# then sees what apt installed), checks DKMS's build for the VM's kernel, the man pages, the
# units and the SDK from the outside (pkg-config and CMake), boots the VM once for
# tests/pkg/guest.sh with no module of the tree's, and last removes the packages again and
# checks that nothing of them is left.

source "$DEV_ROOT/scripts/dev/package.sh"

PKG_NAMES=(dm-user-dkms libdmuser-dev dmuser-tools dmuser-rbd)

# pkg_check NAME CMD...: one test, passed when CMD succeeds; its output goes to
# build-pkg/tests.log, the tail of it to the terminal when it fails.
pkg_check() {
    local name=$1 log="$PKG_DIR/tests.log"
    shift
    echo "==== $name" >>"$log"
    if "$@" >>"$log" 2>&1; then
        t_pass "pkg: $name"
    else
        t_fail "pkg: $name"
        tail -n 20 "$log" | sed 's/^/      /' >&2
    fi
}

pkg_apt_install() {
    # A copy left by an interrupted run has the same version: apt would keep it, not install
    # what was just built.
    if dpkg-query -W -f='${Status}\n' "${PKG_NAMES[@]}" 2>/dev/null | grep -q 'ok installed'; then
        echo "removing the packages a previous run left installed"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q "${PKG_NAMES[@]}" || return 1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${PKG_DEBS[@]}"
}

# DKMS built and installed the module for the kernel the VM boots, and the postinst said
# that the running kernel, which has no headers here, got none.
pkg_dkms_built() {
    dkms status dm-user
    dkms status -m dm-user -k "$VM_KVER" | grep -q ': installed' &&
        [ -f "$(modinfo -k "$VM_KVER" -n dm-user)" ] &&
        case "$(modinfo -k "$VM_KVER" -n dm-user)" in */updates/dkms/*) ;; *) false ;; esac &&
        if [ ! -d "/lib/modules/$(uname -r)/build" ]; then
            grep -q "the running kernel $(uname -r) has no headers" "$PKG_DIR/tests.log"
        fi
}

# Every program in dmuser-tools' and dmuser-rbd's /usr/bin has a man page, and the page names every option
# its --help names (help2man made it from --help; this catches a page that went stale).
pkg_man_pages() {
    local prog opt page text n=0
    for prog in $(dpkg -L dmuser-tools dmuser-rbd | grep '^/usr/bin/'); do
        page=$(man -w "${prog##*/}") || return 1
        echo "$page"
        # The page's source, with roff's \- made plain (rendered, hyphens may become U+2010).
        text=$(zcat -f "$page" | sed 's/\\-/-/g')
        for opt in $("$prog" --help | grep -oE -- '--[a-z][a-z-]+' | sort -u); do
            grep -q -- "$opt" <<<"$text" ||
                { echo "man ${prog##*/} does not mention $opt"; return 1; }
        done
        n=$((n + 1))
    done
    echo "$n man pages"
    [ "$n" -ge 5 ]
}

pkg_units_verify() {
    local unit
    for unit in /lib/systemd/system/dmuser-{file,ramdisk,compressed}@.service; do
        [ -f "$unit" ] || return 1
        # A template is verified as an instance of it.
        ln -sf "$unit" "$PKG_DIR/units/$(basename "${unit/@/@test}")"
    done
    SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$PKG_DIR"/units/*.service 2>&1 |
        tee "$PKG_DIR/units/verify.log"
    ! grep -q . "$PKG_DIR/units/verify.log"
}

pkg_build_pkgconfig() {
    # shellcheck disable=SC2046
    g++ -Wall -Wextra -Werror -O1 "$DEV_ROOT/examples/out-of-tree/daemon.cpp" \
        -o "$PKG_DIR/oot-pkgconfig" $(pkg-config --cflags --libs dmuser) &&
        pkg-config --variable=includedir dmuser | grep -qx /usr/include
}

pkg_build_cmake() {
    rm -rf "$PKG_DIR/cmake"
    cmake -S "$DEV_ROOT/tests/pkg/cmake" -B "$PKG_DIR/cmake" -DCMAKE_BUILD_TYPE=Release &&
        cmake --build "$PKG_DIR/cmake" && [ -x "$PKG_DIR/cmake/serve-control" ]
}

pkg_remove() {
    local f
    # What the packages hold now, and what DKMS made from them.
    dpkg -L "${PKG_NAMES[@]}" | sort -u >"$PKG_DIR/installed-files"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q "${PKG_NAMES[@]}" || return 1
    while read -r f; do
        [ -d "$f" ] && continue # shared directories (/usr/bin...) stay
        if [ -e "$f" ] || [ -L "$f" ]; then echo "left behind: $f"; return 1; fi
    done <"$PKG_DIR/installed-files"
    local left
    left=$(find /lib/modules -path '*/updates/dkms/dm-user.ko*' 2>/dev/null; ls -d /var/lib/dkms/dm-user /usr/src/dm-user-* 2>/dev/null)
    [ -z "$left" ] || { echo "left behind: $left"; return 1; }
    if dpkg-query -W -f='${Status}\n' "${PKG_NAMES[@]}" 2>/dev/null | grep -q 'ok installed'; then
        echo "a package is still installed"; return 1
    fi
}

package_tests() {
    local start=$SECONDS
    need_pkgs "${VM_PKGS[@]}" "${VM_GUEST_PKGS[@]}" "${PKG_PKGS[@]}"
    vm_kernel
    say "package tests: build, lintian, install, DKMS for $VM_KVER, VM, remove"
    if ! (pkg_build); then
        t_fail "pkg: ./dev package builds the packages"
        return 0
    fi
    pkg_build >/dev/null 2>&1 # sets PKG_DIR and PKG_DEBS (the build is done: reused)
    t_pass "pkg: ./dev package builds ${PKG_NAMES[*]}"
    rm -rf "$PKG_DIR/tests.log" "$PKG_DIR/units" && mkdir -p "$PKG_DIR/units"
    pkg_check "lintian reports no errors" pkg_lintian
    if grep -q '^E: ' "$PKG_DIR/lintian.log"; then grep '^E: ' "$PKG_DIR/lintian.log" >&2; fi
    pkg_check "apt install ./dm-user-dkms ./libdmuser-dev ./dmuser-tools ./dmuser-rbd" pkg_apt_install
    pkg_check "dkms built dm-user for the VM's kernel $VM_KVER (none for $(uname -r), said so)" pkg_dkms_built
    pkg_check "every program has a man page naming each --help option" pkg_man_pages
    pkg_check "systemd-analyze verify: dmuser-{file,ramdisk,compressed}@.service" pkg_units_verify
    pkg_check "an out-of-tree daemon builds against /usr/include with pkg-config" pkg_build_pkgconfig
    pkg_check "an out-of-tree daemon builds with CMake find_package(dmuser)" pkg_build_cmake

    say "package tests in the VM (tests/pkg/guest.sh, the DKMS-built module)"
    VMT_PKG_SERVE="$PKG_DIR/cmake/serve-control" vm_run --no-module --quiet --timeout 600 \
        -- bash "$DEV_ROOT/tests/pkg/guest.sh"
    vmt_report_file pkg
    vm_job_cleanup

    pkg_check "apt remove leaves nothing of the packages behind" pkg_remove
    say "package tests took $((SECONDS - start)) s"
}
