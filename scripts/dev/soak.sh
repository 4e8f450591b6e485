# ./dev soak [--quick | --cycles N] [--kernel NAME] [SCENARIO-GLOB]: the soak scenarios of
# tests/soak/ (kill and restart, remove under load, suspend storms in one
# boot; memory pressure in a 256 MiB guest), each bounded by its cycle count
# and time limit; and on the host, sdk-fuzz-protocol and sdk-fuzz-server, the SDK's
# libFuzzer targets for FUZZ_SOAK_SECONDS each (600; --quick: 60). Their
# figures replace those scenarios' rows for this kernel in tests/soak/RESULTS.md. Ends with
# "N passed, N failed" like ./dev test.
source "$DEV_ROOT/scripts/dev/test-vm.sh"
# shellcheck source=scripts/dev/test-fuzz.sh
source "$DEV_ROOT/scripts/dev/test-fuzz.sh"

SOAK_RESULTS=$DEV_ROOT/tests/soak/RESULTS.md

# soak_record FIGURES RESULTS KERNEL CYCLES: rewrite RESULTS.md with this
# run's rows (scenario, outcome, figures) in place of this kernel's old ones.
soak_record() {
    local figures=$1 results=$2 kernel=$3 cycles=$4
    local date commit
    date=$(date -u +%Y-%m-%d)
    commit=$(git -C "$DEV_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$DEV_ROOT" diff --quiet HEAD 2>/dev/null || commit+="+dirty"
    python3 - "$SOAK_RESULTS" "$figures" "$results" "$date" "$commit" "$kernel" "$cycles" <<'PY'
import os, sys
out, figures, results, date, commit, kernel, cycles = sys.argv[1:]
outcome = {}
if os.path.exists(results):
    for line in open(results):
        f = line.rstrip("\n").split("\t")
        if f[0] in ("ok", "fail"):
            outcome[f[1]] = "pass" if f[0] == "ok" else "FAIL: " + (f[3] if len(f) > 3 else "")
rows = {}
if os.path.exists(figures):
    for line in open(figures):
        name, _, figs = line.rstrip("\n").partition("\t")
        rows[name] = figs
for name in outcome:
    rows.setdefault(name, "(no figures: the scenario stopped early)")
head = ["# Soak results", "",
        "Written by `./dev soak` (tests/soak/); a run replaces the rows of the scenarios",
        "it ran on its kernel. Figures are the scenario's own counts; goals: lost=0, hung=0,",
        "verify_errors=0, kernel_complaints=0, rmmod=ok.", "",
        "| date | commit | kernel | scenario | cycles | result | figures |",
        "|---|---|---|---|---|---|---|"]
replaced = {(kernel, name) for name in rows}
kept = []
if os.path.exists(out):
    for line in open(out):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| 20") and len(cells) == 7 and (cells[2], cells[3]) not in replaced:
            kept.append(line.rstrip("\n"))
new = [f"| {date} | {commit} | {kernel} | {name} | {cycles} | {outcome.get(name, 'not run')} | {figs} |"
       for name, figs in sorted(rows.items())]
with open(out, "w") as f:
    f.write("\n".join(head + kept + new) + "\n")
PY
}

# soak_file_matches FILE GLOB: FILE registers a scenario (stest NAME) that GLOB matches.
soak_file_matches() {
    local name
    for name in $(awk '/^stest / { print $2 }' "$1"); do
        # shellcheck disable=SC2053
        [[ "$name" == $2 ]] && return 0
    done
    return 1
}

dev_soak() {
    local cycles=100 only='*'
    while [ $# -gt 0 ]; do
        case "$1" in
            --quick) cycles=10 ;;
            --cycles) cycles=$2; shift ;;
            --cycles=*) cycles=${1#*=} ;;
            --kernel) [ $# -ge 2 ] || die "--kernel wants stock, debug or rt"; VM_KERNEL=$2; shift ;;
            --kernel=*) VM_KERNEL=${1#*=} ;;
            -h | --help)
                echo "usage: ./dev soak [--quick | --cycles N] [--kernel stock|debug|rt] [SCENARIO-GLOB]   (scenarios: kill-restart remove-under-load suspend-storm protocol-fuzz memory-pressure sdk-fuzz-protocol sdk-fuzz-server)"
                return 0
                ;;
            -*) die "./dev soak: unknown option $1" ;;
            *) only=$1 ;;
        esac
        shift
    done
    [[ "$cycles" =~ ^[1-9][0-9]*$ ]] || die "--cycles wants a positive count, got '$cycles'"
    local start=$SECONDS kernel file mem figures results vm_wanted=''
    figures=$(mktemp) results=$(mktemp)
    # The host's scenarios first: the SDK's fuzz targets, no VM.
    local fuzz_seconds=${FUZZ_SOAK_SECONDS:-600}
    [ "$cycles" = 10 ] && [ -z "${FUZZ_SOAK_SECONDS:-}" ] && fuzz_seconds=60
    if fuzz_soak "$only" "$fuzz_seconds" "$figures" "$results"; then
        soak_record "$figures" "$results" "host ($(fuzz_compiler))" "${fuzz_seconds} s"
        : >"$figures"
        : >"$results"
    fi
    for file in soak memory; do
        soak_file_matches "$DEV_ROOT/tests/soak/$file.sh" "$only" && vm_wanted=1
    done
    if [ -z "$vm_wanted" ]; then
        rm -f "$figures" "$results"
        say "soak took $((SECONDS - start)) s; figures in tests/soak/RESULTS.md"
        echo "$DEV_PASSED passed, $DEV_FAILED failed"
        [ "$DEV_FAILED" -eq 0 ]
        return
    fi
    need_pkgs "${VM_PKGS[@]}" "${VM_GUEST_PKGS[@]}" python3
    meson_build build
    export VMT_SOAK_CYCLES=$cycles VMT_SOAK_ONLY=$only
    export VM_KERNEL=${VM_KERNEL:-stock}
    vm_kernel
    kernel="$VM_KVER ($VM_KERNEL)"
    say "soak: $cycles cycles per scenario on $kernel (progress every tenth)"
    # Each file boots a guest of its own size: memory.sh wants a small one.
    for file in soak:2G memory:256M; do
        mem=${file#*:} file=${file%%:*}
        soak_file_matches "$DEV_ROOT/tests/soak/$file.sh" "$only" || continue
        vm_run --quiet --mem "$mem" --timeout 10800 -- bash "$DEV_ROOT/tests/soak/$file.sh"
        vmt_report_file "soak/$file"
        cat "$VM_JOB/figures" >>"$figures" 2>/dev/null
        cat "$VM_JOB/results" >>"$results" 2>/dev/null
        vm_job_cleanup
    done
    soak_record "$figures" "$results" "$kernel" "$cycles"
    rm -f "$figures" "$results"
    say "soak took $((SECONDS - start)) s; figures in tests/soak/RESULTS.md"
    echo "$DEV_PASSED passed, $DEV_FAILED failed"
    [ "$DEV_FAILED" -eq 0 ]
}
