# VM suites for ./dev test: each tests/vm/*.sh file (but lib.sh) runs in its
# own boot, so a crash or hang in one file costs only that file. A file
# registers named tests with tests/vm/lib.sh, which writes one result line per
# test to the job share; the host reports each by name. A test that has no
# result when the guest stops (panic, hang) fails with the reason, and a
# kernel WARNING/BUG/Oops fails the file's run visibly.
#   ./dev test vm [GLOB]   GLOB picks files by name without .sh (legacy-*).
# Env: VMT_FILE_TIMEOUT (seconds per file, default 900), VMT_TIME_SCALE (a
# factor for every time limit: 1, or 4 on the debug kernel), VM_KERNEL
# (stock, debug, rt: ./dev test --kernel).
source "$DEV_ROOT/scripts/dev/vm.sh"

# vmt_report_file STEM: turn the job's results into t_pass/t_fail lines.
vmt_report_file() {
    local stem=$1 results="$VM_JOB/results" kind name secs reason
    local -a planned=()
    local -A outcome=() why=() took=()
    local done_seen=0 dmesg_reported=0 failures=0
    if [ -f "$results" ]; then
        while IFS=$'\t' read -r kind name secs reason; do
            case "$kind" in
                plan) planned+=("$name") ;;
                ok | fail) outcome[$name]=$kind took[$name]=$secs why[$name]=$reason ;;
                done) done_seen=1 ;;
            esac
        done <"$results"
    fi
    if [ ${#planned[@]} -eq 0 ]; then
        echo "    reason: no test started: ${VM_REASON:-the file registered no tests}"
        tail -n 15 "$VM_JOB/console.log" | sed 's/^/    | /'
        t_fail "vm/$stem"
        return
    fi
    for name in "${planned[@]}"; do
        case "${outcome[$name]:-}" in
            ok) t_pass "vm/$stem/$name (${took[$name]} s)" ;;
            fail)
                echo "    reason: ${why[$name]}"
                [[ "${why[$name]}" == kernel\ log:* ]] && dmesg_reported=1
                if [ -f "$VM_JOB/logs/$name.log" ]; then
                    tail -n 25 "$VM_JOB/logs/$name.log" | sed 's/^/    | /'
                fi
                t_fail "vm/$stem/$name"
                failures=$((failures + 1))
                ;;
            *)
                echo "    reason: did not finish: ${VM_REASON:-the guest stopped}"
                if [ -f "$VM_JOB/logs/$name.log" ]; then
                    tail -n 15 "$VM_JOB/logs/$name.log" | sed 's/^/    | /'
                fi
                t_fail "vm/$stem/$name"
                failures=$((failures + 1))
                ;;
        esac
    done
    if [ "$VM_DMESG_BAD" = 1 ] && [ "$dmesg_reported" = 0 ]; then
        vm_print_dmesg
        # A bad log outside every test (boot, between tests) still fails the
        # file; when tests already failed, it is their explanation.
        if [ "$failures" = 0 ]; then
            echo "    reason: the guest kernel log shows a WARNING/BUG/Oops/hung task"
            t_fail "vm/$stem (kernel log)"
        fi
    elif [ "$done_seen" = 0 ] && [ ${#outcome[@]} -eq ${#planned[@]} ]; then
        echo "    reason: the test file stopped after its last test: ${VM_REASON:-unknown}"
        t_fail "vm/$stem (runner)"
    fi
}

vm_tests() {
    local glob=${1:-*} f stem
    local -a files=() summary=()
    for f in "$DEV_ROOT"/tests/vm/$glob.sh; do
        [ -f "$f" ] || continue
        [ "$(basename "$f")" = lib.sh ] && continue
        files+=("$f")
    done
    if [ ${#files[@]} -eq 0 ]; then
        warn "no VM test file matches tests/vm/$glob.sh"
        t_fail "vm (no test files match '$glob')"
        return 0
    fi
    need_pkgs "${VM_PKGS[@]}" "${VM_GUEST_PKGS[@]}"
    mkdir -p "$VM_DIR/jobs"
    # The daemons the tests run (legacy-daemon, examples): a failed build
    # leaves them missing, and the tests that need them say so.
    (meson_build build) || warn "the C++ tree does not build: VM tests that need its binaries will fail"
    # examples-out-of-tree runs daemons built from the installed SDK, as ./dev test host
    # builds them (and reports those builds): build them here when a VM-only run needs them.
    if [[ " ${files[*]} " == *"/examples-out-of-tree.sh "* ]] &&
        [ ! -x "$DEV_ROOT/build/install-test/readme-ramdisk" ] &&
        declare -F host_out_of_tree >/dev/null; then
        say "building the out-of-tree daemons examples-out-of-tree runs (build/install-test)"
        host_out_of_tree
    fi
    local ver
    vm_kernel
    ver=$VM_KVER
    say "vm tests on the ${VM_KERNEL:-stock} kernel $ver ($VM_VMLINUZ; $VM_KERNEL_APPEND)"
    vm_initramfs "$ver"
    # Build the module once for all boots.
    if ! (vm_build_module "$ver" && echo "$VM_KO" >"$VM_DIR/vmtests.ko"); then
        t_fail "vm (kernel/dm-user does not build)"
        return 0
    fi
    VM_KO_PREBUILT=$(cat "$VM_DIR/vmtests.ko")
    export VM_KO_PREBUILT
    [ -n "$VM_KO_PREBUILT" ] || warn "no dm-user module: tests that need it will fail"

    # The debug kernel runs several times slower (KASAN checks every access,
    # lockdep every lock): every time limit in the guest stretches with it.
    if [ -z "${VMT_TIME_SCALE:-}" ]; then
        VMT_TIME_SCALE=1
        [ "${VM_KERNEL:-stock}" = debug ] && VMT_TIME_SCALE=4
    fi
    export VMT_TIME_SCALE
    local file_timeout=$((${VMT_FILE_TIMEOUT:-900} * VMT_TIME_SCALE))
    local total_start=$SECONDS i=0
    for f in "${files[@]}"; do
        i=$((i + 1))
        stem=$(basename "$f" .sh)
        say "vm tests: $stem ($i/${#files[@]})"
        vm_run --quiet --timeout "$file_timeout" -- bash "$f"
        vmt_report_file "$stem"
        summary+=("$(printf '%-28s %4d s' "$stem" "$VM_SECONDS")")
        vm_job_cleanup
    done
    [ -n "$VM_KO_PREBUILT" ] && rm -f "$VM_KO_PREBUILT"
    unset VM_KO_PREBUILT
    say "vm test files took $((SECONDS - total_start)) s:"
    printf '    %s\n' "${summary[@]}" >&2
}
