# Host suites for ./dev test (owned by the SDK work, issue 3).
host_tests() {
    say "host tests: not written yet"
}
