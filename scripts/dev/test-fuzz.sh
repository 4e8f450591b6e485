# The SDK's libFuzzer targets (tests/fuzz/, issue 11 §3): built with clang into build-fuzz/
# by fuzz_build, so the gcc build needs no clang. ./dev test runs each over its committed
# corpus and then a short seeded run (fuzz_tests); ./dev soak 'sdk-fuzz-*' runs them longer
# (fuzz_soak, from scripts/dev/soak.sh).

FUZZ_TARGETS=(fuzz_protocol fuzz_server)
# Runs of the seeded run in ./dev test, per target: fuzz_server does 150 to 400 inputs a
# second on a 2-core host, fuzz_protocol thousands. On a host so loaded that it does far
# fewer, FUZZ_TEST_SECONDS ends the run first, so ./dev test stays short; the test
# names the runs it did.
FUZZ_TEST_RUNS=${FUZZ_TEST_RUNS:-2000}
FUZZ_TEST_SECONDS=${FUZZ_TEST_SECONDS:-30}

# fuzz_build: build-fuzz/<target> for every target, rebuilt when a source or header changed.
fuzz_build() {
    need_pkgs "${BUILD_PKGS[@]}" "${FUZZ_PKGS[@]}"
    local out=$DEV_ROOT/build-fuzz target src
    mkdir -p "$out"
    # shellcheck disable=SC2054 # the commas are -fsanitize's
    # -fno-sanitize=function: clang 14 cannot emit UBSan's function checks for
    # coroutines ("Cannot represent a difference across sections", llvm issue 49689).
    local flags=(-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize=function
        -fno-sanitize-recover=all -Wall -Wextra -Werror
        -I"$DEV_ROOT/include" -I"$DEV_ROOT/kernel/dm-user/include/uapi")
    for target in "${FUZZ_TARGETS[@]}"; do
        src=$DEV_ROOT/tests/fuzz/$target.cpp
        if [ -x "$out/$target" ] && [ -z "$(find "$src" "$DEV_ROOT/include" \
            "$DEV_ROOT/kernel/dm-user/include/uapi" -newer "$out/$target" -print -quit)" ]; then
            continue
        fi
        say "building build-fuzz/$target (clang, libFuzzer + ASan + UBSan)"
        nice clang++ "${flags[@]}" "$src" -o "$out/$target" -luring -lfmt -pthread \
            >"$out/$target.log" 2>&1 || {
            tail -n 40 "$out/$target.log" >&2
            return 1
        }
    done
}

# The options every run shares: a crash, leak or hang (-timeout per input) fails it.
fuzz_common_opts() {
    echo -timeout=25 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$DEV_ROOT/build-fuzz/crash-$1-"
}

fuzz_tests() {
    say "fuzz targets (build-fuzz/)"
    if ! fuzz_build; then
        t_fail "fuzz: build of the targets (see build-fuzz/*.log)"
        return
    fi
    local target corpus log n
    for target in "${FUZZ_TARGETS[@]}"; do
        corpus=$DEV_ROOT/tests/fuzz/corpus/$target
        log=$DEV_ROOT/build-fuzz/$target-test.log
        n=$(find "$corpus" -type f | wc -l)
        # shellcheck disable=SC2046
        if [ "$n" -gt 0 ] && "$DEV_ROOT/build-fuzz/$target" $(fuzz_common_opts "$target") \
            -runs=0 "$corpus" >"$log.corpus" 2>&1; then
            t_pass "fuzz: $target replays its corpus ($n inputs)"
        else
            t_fail "fuzz: $target replays its corpus ($n inputs; see build-fuzz/$target-test.log.corpus)"
            tail -n 30 "$log.corpus" | sed 's/^/      /' >&2
        fi
        # New inputs go to a scratch copy: the committed corpus stays as it is.
        rm -rf "$DEV_ROOT/build-fuzz/$target-scratch"
        cp -r "$corpus" "$DEV_ROOT/build-fuzz/$target-scratch"
        # shellcheck disable=SC2046
        if "$DEV_ROOT/build-fuzz/$target" $(fuzz_common_opts "$target") -seed=1 \
            -runs="$FUZZ_TEST_RUNS" -max_total_time="$FUZZ_TEST_SECONDS" -max_len=2048 "$DEV_ROOT/build-fuzz/$target-scratch" \
            >"$log" 2>&1; then
            t_pass "fuzz: $target, up to $FUZZ_TEST_RUNS runs or $FUZZ_TEST_SECONDS s from seed 1: $(fuzz_figures "$log")"
        else
            t_fail "fuzz: $target, up to $FUZZ_TEST_RUNS runs or $FUZZ_TEST_SECONDS s from seed 1 (see build-fuzz/$target-test.log)"
            grep -m 1 -A 20 -E '^(==[0-9]+==ERROR|fuzz_|.*runtime error)' "$log" | sed 's/^/      /' >&2 || true
        fi
    done
}

# fuzz_figures LOG: "execs=N execs/s=N cov=N" from libFuzzer's final stats.
fuzz_figures() {
    awk '/stat::number_of_executed_units/ { n = $2 }
         /stat::average_exec_per_sec/ { s = $2 }
         /^#[0-9]+.*cov: / { for (i = 1; i <= NF; i++) if ($i == "cov:") c = $(i + 1) }
         END { printf "execs=%s execs/s=%s cov=%s", n, s, c }' "$1"
}

fuzz_compiler() {
    clang++ --version 2>/dev/null | head -n 1 | sed 's/^Debian //; s/ (.*//'
}

# fuzz_soak GLOB SECONDS FIGURES RESULTS: runs each target whose scenario name
# (sdk-fuzz-protocol, sdk-fuzz-server) GLOB matches for SECONDS, from its committed corpus
# (new inputs go to build-fuzz/<target>-soak/), printing its progress every minute; appends
# "NAME\tfigures" to FIGURES and "ok|fail\tNAME\t\treason" to RESULTS, as the VM scenarios
# do. False when no target matched.
fuzz_soak() {
    local glob=$1 seconds=$2 figures=$3 results=$4 target name log corpus ran='' rc pid
    for target in "${FUZZ_TARGETS[@]}"; do
        name=sdk-fuzz-${target#fuzz_}
        # shellcheck disable=SC2053
        [[ "$name" == $glob ]] || continue
        if [ -z "$ran" ]; then
            ran=1
            fuzz_build || die "build of the fuzz targets failed (see build-fuzz/*.log)"
        fi
        corpus=$DEV_ROOT/build-fuzz/$target-soak
        log=$DEV_ROOT/build-fuzz/$target-soak.log
        mkdir -p "$corpus"
        cp -n "$DEV_ROOT/tests/fuzz/corpus/$target"/* "$corpus"/ || true
        say "soak: $name for $seconds s (log: build-fuzz/$target-soak.log)"
        # shellcheck disable=SC2046
        nice "$DEV_ROOT/build-fuzz/$target" $(fuzz_common_opts "$target") -max_len=2048 \
            -max_total_time="$seconds" "$corpus" >"$log" 2>&1 &
        pid=$!
        while ! wait_or_tick "$pid" 60; do
            printf '  %s: %s\n' "$name" "$(grep -E '^#[0-9]+' "$log" | tail -n 1)" >&2
        done
        rc=0
        wait "$pid" || rc=$?
        local figs crash
        figs="$(fuzz_figures "$log") crashes=$([ "$rc" = 0 ] && echo 0 || echo 1)"
        printf '%s\t%s\n' "$name" "$figs" >>"$figures"
        if [ "$rc" = 0 ]; then
            printf 'ok\t%s\n' "$name" >>"$results"
            t_pass "soak: $name ($figs)"
        else
            crash=$(find "$DEV_ROOT/build-fuzz" -name "crash-$target-*" -newer "$corpus" | head -n 1)
            printf 'fail\t%s\t\t%s\n' "$name" "crash input ${crash#"$DEV_ROOT"/}" >>"$results"
            t_fail "soak: $name ($figs; crash input ${crash#"$DEV_ROOT"/})"
            grep -m 1 -A 20 -E '^(==[0-9]+==ERROR|fuzz_|.*runtime error)' "$log" | sed 's/^/      /' >&2 || true
        fi
    done
    [ -n "$ran" ]
}

# wait_or_tick PID SECONDS: true once PID has ended, false after SECONDS if it still runs.
wait_or_tick() {
    local i
    for ((i = 0; i < $2; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 1
    done
    ! kill -0 "$1" 2>/dev/null
}
