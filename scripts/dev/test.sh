# ./dev test: every suite, each test reported by name, then "N passed, N failed".
#   ./dev test            host unit tests, the same under ASan+UBSan, the packages, then
#                         the VM tests
#   ./dev test host       host suites only
#   ./dev test package    the Debian packages only: build, lintian, install on this host,
#                         one VM boot, remove (scripts/dev/test-pkg.sh)
#   ./dev test vm [GLOB]  VM suites only (GLOB picks tests/vm/*.sh files)
#   --kernel NAME         the VM suites boot NAME: stock (default), debug
#                         (KASAN, lockdep, kmemleak...: ./dev kernel debug builds
#                         it) or rt (Debian's PREEMPT_RT). Not stock: the VM
#                         suites only, unless host or all is asked for.
source "$DEV_ROOT/scripts/dev/test-host.sh"
source "$DEV_ROOT/scripts/dev/test-vm.sh"
source "$DEV_ROOT/scripts/dev/test-pkg.sh"

dev_test() {
    local -a args=()
    local kernel=stock
    while [ $# -gt 0 ]; do
        case "$1" in
            --kernel) [ $# -ge 2 ] || die "--kernel wants stock, debug or rt"; kernel=$2; shift 2 ;;
            --kernel=*) kernel=${1#*=}; shift ;;
            *) args+=("$1"); shift ;;
        esac
    done
    case "$kernel" in stock | debug | rt) ;; *) die "--kernel: stock, debug or rt, not '$kernel'" ;; esac
    export VM_KERNEL=$kernel
    set -- "${args[@]}"
    local what=${1:-all}
    [ $# -eq 0 ] && [ "$kernel" != stock ] && what=vm
    [ $# -gt 0 ] && shift
    local start=$SECONDS
    case "$what" in
        all)
            host_tests
            package_tests
            vm_tests "$@"
            ;;
        host) host_tests ;;
        package) package_tests ;;
        vm) vm_tests "$@" ;;
        *) die "usage: ./dev test [all|host|package|vm [GLOB]] [--kernel stock|debug|rt]" ;;
    esac
    say "tests took $((SECONDS - start)) s"
    if [ "$DEV_FAILED" -gt 0 ]; then
        printf 'failed: %s\n' "${DEV_FAILED_NAMES[@]}"
    fi
    echo "$DEV_PASSED passed, $DEV_FAILED failed"
    [ "$DEV_FAILED" -eq 0 ]
}
