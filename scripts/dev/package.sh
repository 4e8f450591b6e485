# ./dev package: build the Debian packages (dm-user-dkms, libdmuser-dev, dmuser-tools,
# dmuser-rbd) with dpkg-buildpackage -us -uc from a copy of the tree in build-pkg/, then
# lintian them.
# The packages land in build-pkg/; a second run with the same sources reuses them.

# pkg_sources: NUL-separated, the files of the tree as it is now: what git tracks and the
# new files it does not ignore, less those deleted and not yet committed.
pkg_sources() {
    local f
    (cd "$DEV_ROOT" && git ls-files -co --exclude-standard -z) | while IFS= read -r -d '' f; do
        if [ -e "$DEV_ROOT/$f" ] || [ -L "$DEV_ROOT/$f" ]; then printf '%s\0' "$f"; fi
    done
}

# pkg_build: set PKG_DIR (build-pkg/) and PKG_DEBS (the .debs of the tree as it is now,
# committed or not); builds them unless this exact source was built already.
pkg_build() {
    need_pkgs "${BUILD_PKGS[@]}" "${PKG_PKGS[@]}"
    PKG_DIR="$DEV_ROOT/build-pkg"
    local version src key log
    version=$(dpkg-parsechangelog -l "$DEV_ROOT/debian/changelog" -S Version)
    src="$PKG_DIR/dm-user-$version"
    log="$PKG_DIR/build.log"
    mkdir -p "$PKG_DIR"
    key=$(pkg_sources | (cd "$DEV_ROOT" && xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)
    PKG_DEBS=("$PKG_DIR"/dm-user-dkms_"$version"_all.deb "$PKG_DIR"/libdmuser-dev_"$version"_all.deb
        "$PKG_DIR"/dmuser-tools_"$version"_"$(dpkg --print-architecture)".deb
        "$PKG_DIR"/dmuser-rbd_"$version"_"$(dpkg --print-architecture)".deb)
    if [ "$(cat "$PKG_DIR/source.key" 2>/dev/null)" = "$key" ] && ls "${PKG_DEBS[@]}" >/dev/null 2>&1; then
        say "packages of this source are in build-pkg/ already"
        return 0
    fi
    rm -rf "$src" "$PKG_DIR"/*.deb "$PKG_DIR"/*.changes "$PKG_DIR"/source.key
    mkdir -p "$src"
    pkg_sources | tar -C "$DEV_ROOT" -cf - --no-recursion --null -T - |
        tar -C "$src" -xf - || die "cannot copy the tree to $src"
    say "dpkg-buildpackage -us -uc (log: build-pkg/build.log)"
    if ! (cd "$src" && nice dpkg-buildpackage -us -uc >"$log" 2>&1); then
        tail -n 40 "$log" >&2
        die "dpkg-buildpackage failed (log: build-pkg/build.log)"
    fi
    ls "${PKG_DEBS[@]}" >/dev/null || die "dpkg-buildpackage did not make ${PKG_DEBS[*]}"
    echo "$key" >"$PKG_DIR/source.key"
}

# pkg_lintian: lintian over the build's .changes (binary and source packages); 0 when it
# reports no errors. Its report is build-pkg/lintian.log.
pkg_lintian() {
    local changes=("$PKG_DIR"/dm-user_*.changes)
    lintian --fail-on error --tag-display-limit 0 "${changes[0]}" >"$PKG_DIR/lintian.log" 2>&1
}

dev_package() {
    case "${1:-}" in
        -h | --help)
            echo "usage: ./dev package   the .debs into build-pkg/, then lintian (no errors allowed)"
            return 0
            ;;
    esac
    pkg_build
    printf '  %s\n' "${PKG_DEBS[@]#"$DEV_ROOT"/}" >&2
    if pkg_lintian; then
        say "lintian: no errors ($(grep -c '^W: ' "$PKG_DIR/lintian.log" || true) warnings; build-pkg/lintian.log)"
    else
        grep '^E: ' "$PKG_DIR/lintian.log" >&2
        die "lintian reports errors (build-pkg/lintian.log)"
    fi
}
