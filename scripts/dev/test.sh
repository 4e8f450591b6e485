# ./dev test: every suite, each test reported by name, then "N passed, N failed".
#   ./dev test            host unit tests, the same under ASan+UBSan, then the VM tests
#   ./dev test host       host suites only
#   ./dev test vm [GLOB]  VM suites only (GLOB picks tests/vm/*.sh files)
source "$DEV_ROOT/scripts/dev/test-host.sh"
source "$DEV_ROOT/scripts/dev/test-vm.sh"

dev_test() {
    local what=${1:-all}
    [ $# -gt 0 ] && shift
    local start=$SECONDS
    case "$what" in
        all)
            host_tests
            vm_tests "$@"
            ;;
        host) host_tests ;;
        vm) vm_tests "$@" ;;
        *) die "usage: ./dev test [all|host|vm [GLOB]]" ;;
    esac
    say "tests took $((SECONDS - start)) s"
    if [ "$DEV_FAILED" -gt 0 ]; then
        printf 'failed: %s\n' "${DEV_FAILED_NAMES[@]}"
    fi
    echo "$DEV_PASSED passed, $DEV_FAILED failed"
    [ "$DEV_FAILED" -eq 0 ]
}
