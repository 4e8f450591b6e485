# Host suites for ./dev test (owned by the SDK work, issue 3).
#
# Builds build/ and build-asan/ (AddressSanitizer + UndefinedBehaviorSanitizer, any UBSan
# report fatal), runs every Catch2 test case of the host test programs in both, one
# process per case so a crash is pinned on its case, and reports each case by name; then
# the unit tests once more under ThreadSanitizer (build-tsan/).
# Then installs the SDK to a scratch prefix and builds a daemon out of tree with
# `pkg-config dmuser`, as a user would. Last, the libFuzzer targets of tests/fuzz/ replay
# their corpora and run briefly, seeded (scripts/dev/test-fuzz.sh).

# shellcheck source=scripts/dev/test-fuzz.sh
source "$DEV_ROOT/scripts/dev/test-fuzz.sh"

# catch2_cases BINARY LABEL: one t_pass/t_fail per test case of BINARY.
catch2_cases() {
    local bin=$1 label=$2 name spec out
    if [ ! -x "$bin" ]; then
        t_fail "$label: $bin was not built"
        return
    fi
    while IFS= read -r name; do
        [ -n "$name" ] || continue
        # Catch2 test specs treat , [ ] * ~ " \ specially: escape them to match one name.
        spec=$(printf '%s' "$name" | sed 's/[],[\\*~"]/\\&/g')
        if out=$(cd "$DEV_ROOT" && timeout 300 "$bin" -r compact "$spec" 2>&1) &&
            grep -q '^Passed 1 test case' <<<"$out"; then
            t_pass "$label: $name"
        else
            t_fail "$label: $name"
            tail -n 30 <<<"$out" | sed 's/^/      /' >&2
        fi
    done < <("$bin" --list-test-names-only)
}

# The programs with Catch2 cases, relative to a build dir, and their labels.
HOST_TEST_PROGRAMS=(tests/unit/dmuser-unit-tests:unit examples/dmuser-examples-tests:examples)

host_test_build() {
    local dir=$1 suffix=$2 entry
    for entry in "${HOST_TEST_PROGRAMS[@]}"; do
        catch2_cases "$DEV_ROOT/$dir/${entry%%:*}" "${entry##*:}$suffix"
    done
}

# Installs build/ to a scratch prefix and compiles a ramdisk daemon against it.
host_out_of_tree() {
    local prefix="$DEV_ROOT/build/install-test" log="$DEV_ROOT/build/install-test.log"
    local name="sdk: out-of-tree build with pkg-config dmuser"
    rm -rf "$prefix"
    if ! meson install -C "$DEV_ROOT/build" --destdir "$prefix" --no-rebuild >"$log" 2>&1; then
        t_fail "$name (meson install failed, see build/install-test.log)"
        return
    fi
    local root="$prefix/usr/local" pc
    pc=$(dirname "$(find "$root" -name dmuser.pc | head -n 1)")
    cat >"$prefix/daemon.cpp" <<'CPP'
#include <dmuser/dmuser.hpp>
#include <dmuser/testing/fake_kernel.hpp>

#include <cstring>
#include <vector>

struct ramdisk {
    std::vector<std::byte> mem = std::vector<std::byte>(1 << 20);
    std::uint64_t size() const { return mem.size(); }
    void read(std::uint64_t off, std::span<std::byte> out) {
        std::memcpy(out.data(), mem.data() + off, out.size());
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
};

int main() {
    ramdisk disk;
    dmuser::testing::fake_options fo;
    fo.device_bytes = disk.size();
    dmuser::testing::fake_kernel k(fo);
    dmuser::server s(disk, k, {.io_flusher = false, .handle_signals = false});
    std::thread t([&] { s.run(); });
    std::vector<std::byte> data(4096, std::byte{0x5a});
    bool ok = k.write(8192, data).result == DM_USER_RESP_SUCCESS && k.read(8192, 4096).data == data;
    s.stop();
    t.join();
    return ok ? 0 : 1;
}
CPP
    # pkg-config's prefix points at /usr/local; rewrite it to the scratch root.
    local flags
    if flags=$(PKG_CONFIG_PATH="$pc" pkg-config --define-variable=prefix="$root" \
        --cflags --libs dmuser 2>>"$log") &&
        # shellcheck disable=SC2086
        g++ -Wall -Wextra -Werror -O1 "$prefix/daemon.cpp" -o "$prefix/daemon" $flags >>"$log" 2>&1 &&
        "$prefix/daemon" >>"$log" 2>&1; then
        t_pass "$name"
    else
        t_fail "$name (see build/install-test.log)"
        tail -n 20 "$log" >&2
    fi
    # The examples' out-of-tree device daemon, built the same way; tests/vm/examples-out-of-tree.sh
    # runs it in the VM.
    # shellcheck disable=SC2086
    if g++ -Wall -Wextra -Werror -O1 "$DEV_ROOT/examples/out-of-tree/daemon.cpp" \
        -o "$prefix/oot-daemon" $flags >>"$log" 2>&1; then
        t_pass "examples: out-of-tree device daemon builds with pkg-config dmuser"
    else
        t_fail "examples: out-of-tree device daemon builds with pkg-config dmuser (see build/install-test.log)"
    fi
    # The README's own ramdisk, exactly as printed there, stays within 30 lines and builds;
    # tests/vm/examples-out-of-tree.sh serves a device with it.
    name="readme: the 'Write your own daemon' ramdisk builds out of tree in <= 30 lines"
    awk '/^## Write your own daemon/ {s = 1} s && /^```cpp/ {c = 1; next} c && /^```/ {exit} c' \
        "$DEV_ROOT/README.md" >"$prefix/readme-ramdisk.cpp"
    local lines
    lines=$(grep -c . "$prefix/readme-ramdisk.cpp" || true)
    # shellcheck disable=SC2086
    if [ "$lines" -gt 0 ] && [ "$lines" -le 30 ] &&
        g++ -Wall -Wextra -Werror -O1 "$prefix/readme-ramdisk.cpp" -o "$prefix/readme-ramdisk" \
            $flags >>"$log" 2>&1; then
        t_pass "$name ($lines lines)"
    else
        t_fail "$name ($lines non-blank lines; see build/install-test.log)"
    fi
}

# sanitizer_build DIR OPTIONS... -- TARGETS...: configure DIR with OPTIONS (again, if it
# exists, so a changed option applies) and build only TARGETS: the test programs, not the
# daemons, benchmarks and one-file-per-header checks that build/ has already compiled.
sanitizer_build() {
    local dir=$1 opts=() log
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        opts+=("$1")
        shift
    done
    shift
    log="$DEV_ROOT/$dir/ninja.log"
    if [ -f "$DEV_ROOT/$dir/build.ninja" ]; then
        meson configure "$DEV_ROOT/$dir" "${opts[@]}" >/dev/null ||
            die "meson configure $dir failed"
    else
        say "configuring $dir"
        meson setup "$DEV_ROOT/$dir" "$DEV_ROOT" "${opts[@]}" >/dev/null ||
            die "meson setup $dir failed"
    fi
    say "building $dir ($*)"
    ninja -C "$DEV_ROOT/$dir" "$@" >"$log" 2>&1 || {
        tail -n 60 "$log" >&2
        die "build of $dir failed (full log: $dir/ninja.log)"
    }
}

# The conformance daemon (tests/conformance/) against the fake kernel's stream channels,
# Part 2 and Part 1: what it saw must be what it saw on the module (expected.txt, which the
# VM test part2-conformance-fake-and-module checks against the module itself).
host_conformance() {
    local mode out
    for mode in --fake --fake-part1; do
        if out=$(timeout 120 "$DEV_ROOT/build/tests/dmuser-conformance" "$mode" 2>&1) &&
            diff -u "$DEV_ROOT/tests/conformance/expected.txt" - <<<"$out" >/dev/null; then
            t_pass "conformance: the fake kernel ($mode) sees what the module does"
        else
            t_fail "conformance: the fake kernel ($mode) sees what the module does"
            diff -u "$DEV_ROOT/tests/conformance/expected.txt" - <<<"$out" | head -n 40 >&2
        fi
    done
}

host_tests() {
    meson_build build
    say "host tests (build/)"
    host_test_build build ""
    host_conformance
    host_out_of_tree
    # GCC 12's -Wmaybe-uninitialized misfires inside libstdc++ under the sanitizers (e.g.
    # std::function in <regex>); the plain build keeps the warning. -O1 -g1 (line tables,
    # enough for the sanitizers' stack traces) compile in about 57% of the time of -O2 -g.
    local asan_opts=(-Db_sanitize=address,undefined -Doptimization=1
        "-Dcpp_args=-g1 -fno-sanitize-recover=all -Wno-maybe-uninitialized")
    sanitizer_build build-asan "${asan_opts[@]}" -- "${HOST_TEST_PROGRAMS[@]%%:*}"
    say "host tests under ASan+UBSan (build-asan/)"
    local -x ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
    local -x UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
    host_test_build build-asan " (asan+ubsan)"

    # ThreadSanitizer over the SDK's unit tests (the examples' tests run on one thread).
    # GCC 12 warns that TSan does not model atomic_thread_fence, which liburing's
    # barriers use; the fences order memory shared with the kernel, not between threads.
    local tsan_opts=(-Db_sanitize=thread -Doptimization=1
        "-Dcpp_args=-g1 -Wno-maybe-uninitialized -Wno-tsan")
    sanitizer_build build-tsan "${tsan_opts[@]}" -- tests/unit/dmuser-unit-tests
    say "unit tests under TSan (build-tsan/)"
    local -x TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
    catch2_cases "$DEV_ROOT/build-tsan/tests/unit/dmuser-unit-tests" "unit (tsan)"

    fuzz_tests
}
