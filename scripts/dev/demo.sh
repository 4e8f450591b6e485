# ./dev demo
dev_demo() {
    die "./dev demo is not written yet"
}
