# VM suites for ./dev test (owned by the VM bench work, issue 2).
vm_tests() {
    say "vm tests: not written yet"
}
