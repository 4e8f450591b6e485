# ./dev bench [--quick] [--host-only | --vm-only] [--profile] [--no-ceph]
#             [--devices "brd dmnbd ..."] [--note "what changed"]
#
# The benchmark suite (benchmarks/README.md): host micro-benchmarks of the SDK
# through its fake kernel, then one VM boot in which fio measures every device
# (brd, null_blk, loop, nbd and dmuser-nbd, the legacy daemon, dmuser-ramdisk,
# ext4 on it, tmpfs; then a one-node Ceph cluster's image through krbd, rbd-nbd
# and dmuser-rbd). Writes benchmarks/results/latest.md, chart.png and raw/.
#   --quick       2 s per figure instead of 6 (a smoke run; noisier)
#   --profile     also take perf profiles in the guest (about a minute more)
#   --no-ceph     leave out the Ceph section (krbd, rbd-nbd, dmuser-rbd: about
#                 4 minutes, most of it the cluster starting under TCG)
#   --devices L   measure only these devices (fio-suite.sh's names, e.g.
#                 "brd nbd dmnbd krbd rbdnbd dmrbd"); the results replace
#                 latest.md like any run
#   --note TEXT   append a line to benchmarks/results/HISTORY.md: TEXT, and
#                 dmuser-ramdisk's figures before (the previous run) and after

BENCH_BUILD=build-bench

# bench_build: build what the suite runs. A tree that does not build yet still
# gets its VM baseline: the daemons that are missing show as "not built".
bench_build() {
    if (meson_build "$BENCH_BUILD"); then
        return 0
    fi
    warn "the C++ tree does not build: measuring what is already built"
}

# bench_host OUT.json: the micro-benchmarks and callgrind, when built.
bench_host() {
    local out=$1 bin="$DEV_ROOT/$BENCH_BUILD/benchmarks/dmuser-microbench"
    if [ ! -x "$bin" ]; then
        warn "no host micro-benchmark built ($BENCH_BUILD/benchmarks/dmuser-microbench): skipped"
        return 0
    fi
    say "host micro-benchmarks (the SDK through the fake kernel)"
    "$DEV_ROOT/benchmarks/host/run.sh" "$bin" "$out" "$BENCH_QUICK" ||
        warn "host micro-benchmarks failed"
}

# bench_stage_fio: fio with its libraries and loader in one folder the guest
# copies to its tmpfs, since every exec over the guest's 9p root is slow.
bench_stage_fio() {
    local stage="$DEV_ROOT/$BENCH_BUILD/bench/stage" fio
    fio=$(command -v fio) || die "fio is not installed"
    if [ -x "$stage/fio" ] && [ "$stage/fio" -nt "$fio" ]; then return 0; fi
    rm -rf "$stage"
    mkdir -p "$stage/lib"
    cp -L "$fio" "$stage/fio" &&
        ldd "$fio" | awk '$3 ~ /^\// { print $3 }' | xargs -r cp -L -t "$stage/lib" &&
        cp -L "$(ldd "$fio" | awk '$1 ~ /^\/.*ld-linux/ { print $1 }')" "$stage/ld.so" || {
        rm -rf "$stage"
        warn "could not stage fio for the guest: it will run fio from 9p (slower)"
    }
}

# bench_progress: the console as it comes (awk would buffer it), without the
# results tarballs.
bench_progress() {
    local line hide=0
    while IFS= read -r line; do
        case $line in
            ==BENCH-TAR-BEGIN==*) hide=1; echo "  (results of${line#==BENCH-TAR-BEGIN==} received)" ;;
            ==BENCH-TAR-END==*) hide=0 ;;
            *) [ "$hide" = 1 ] || printf '  %s\n' "$line" ;;
        esac
    done
}

# bench_vm DIR: one boot, the fio suite; its results unpacked into DIR.
bench_vm() {
    local dir=$1 log="$1.console" args=()
    [ "$BENCH_QUICK" = 1 ] && args+=(--quick)
    [ "$BENCH_PROFILE" = 1 ] && args+=(--profile)
    [ "$BENCH_CEPH" = 0 ] && args+=(--no-ceph)
    [ -n "$BENCH_DEVICES" ] && args+=(--devices "$BENCH_DEVICES")
    bench_stage_fio
    say "fio in the VM: one boot, every device (progress below; about 14 minutes, 4 of them the Ceph section)"
    # The guest's results come back as a base64 tarball between two marker
    # lines on the console; show everything else as progress.
    local rc=0
    {
        # Figures of the stock kernel as it ships: no slab or page poisoning
        # (which the tests turn on), so they compare with earlier rounds.
        VM_MEMDEBUG='' "$DEV_ROOT/dev" vm --mem 3G --timeout 2400 -- \
            "$DEV_ROOT/benchmarks/vm/fio-suite.sh" --build "$DEV_ROOT/$BENCH_BUILD" "${args[@]}" \
            2>&1 | tr -d '\r' | tee "$log" | bench_progress
        rc=${PIPESTATUS[0]}
    } || true
    rm -rf "$dir" "$dir.blocks"
    mkdir -p "$dir" "$dir.blocks"
    # One tarball per device, each between its own markers.
    awk -v out="$dir.blocks" '/^==BENCH-TAR-BEGIN==/ { n++; on = 1; next }
        /^==BENCH-TAR-END==/ { on = 0; next }
        on && /^[A-Za-z0-9+\/=]+$/ { print > (out "/" n) }' "$log"
    local block got=0
    for block in "$dir.blocks"/*; do
        [ -f "$block" ] || continue
        if base64 -d <"$block" 2>/dev/null | tar -xzf - -C "$dir" 2>/dev/null; then
            got=$((got + 1))
        else
            warn "a damaged results block from the guest: ${block##*/}"
        fi
    done
    rm -rf "$dir.blocks"
    if [ "$got" = 0 ]; then
        warn "no results came back from the guest (console: $log)"
        return 1
    fi
    [ "$rc" = 0 ] || warn "./dev vm exited $rc (console: $log); reporting what came back"
    return 0
}

dev_bench() {
    BENCH_QUICK=0
    BENCH_PROFILE=0
    BENCH_CEPH=1
    BENCH_DEVICES=""
    local host=1 vm=1 note=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --quick) BENCH_QUICK=1 ;;
            --profile) BENCH_PROFILE=1 ;;
            --no-ceph) BENCH_CEPH=0 ;;
            --devices) BENCH_DEVICES=$2; shift ;;
            --host-only) vm=0 ;;
            --vm-only) host=0 ;;
            --note) note=$2; shift ;;
            -h | --help)
                sed -n '1,/^$/p' "$DEV_ROOT/scripts/dev/bench.sh" | sed 's/^# \{0,1\}//'
                return 0
                ;;
            *) die "./dev bench: unknown option $1 (see ./dev bench --help)" ;;
        esac
        shift
    done
    local start=$SECONDS work="$DEV_ROOT/$BENCH_BUILD/bench"
    need_pkgs python3 gnuplot-nox fio nbdkit nbd-client valgrind
    [ "$BENCH_PROFILE" = 1 ] && need_pkgs linux-perf
    bench_build
    mkdir -p "$work"
    # --vm-only keeps the last host results for the report.
    if [ "$host" = 1 ]; then
        rm -f "$work/host.json"
        bench_host "$work/host.json"
    fi
    local report=(--out "$DEV_ROOT/benchmarks/results")
    if [ "$vm" = 1 ]; then
        local rev
        # A clean tree makes grep fail: that must not stop the run (set -e).
        rev=$(git -C "$DEV_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
        if git -C "$DEV_ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then
            rev+=+dirty
        fi
        local load
        load=$(cut -d' ' -f1-3 /proc/loadavg)
        if bench_vm "$work/vm"; then
            echo "$rev" >"$work/vm/commit.txt"
            echo "$load" >"$work/vm/host-load.txt"
            report+=(--vm "$work/vm")
            bench_keep_raw "$work/vm"
        fi
    fi
    [ -f "$work/host.json" ] && report+=(--host "$work/host.json")
    [ -n "$note" ] && report+=(--note "$note")
    say "writing benchmarks/results/"
    python3 "$DEV_ROOT/benchmarks/report.py" "${report[@]}" >/dev/null || die "report failed"
    # The goals, as the run ends.
    sed -n '/^## Goals/,/^## /p' "$DEV_ROOT/benchmarks/results/latest.md" | sed '$d'
    say "bench took $((SECONDS - start)) s: benchmarks/results/latest.md, chart.png, raw/"
}

# bench_keep_raw DIR: the fio JSON and the run's side facts under
# benchmarks/results/raw/, replacing the previous run's.
bench_keep_raw() {
    local src=$1 raw="$DEV_ROOT/benchmarks/results/raw" d
    mkdir -p "$raw"
    find "$raw" -mindepth 1 -maxdepth 1 ! -name tmp -exec rm -rf {} +
    cp "$src/meta.txt" "$raw/" 2>/dev/null
    for d in "$src"/*/; do
        d=${d%/}
        mkdir -p "$raw/${d##*/}"
        find "$d" -maxdepth 1 -type f \( -name '*.json' -o -name '*.iouwrk' -o -name '*.cpu' -o -name '*.osdcpu' \
            -o -name status -o -name note -o -name 'profile.txt' -o -name 'iouwrk-idle' \) \
            -exec cp {} "$raw/${d##*/}/" \;
    done
}
