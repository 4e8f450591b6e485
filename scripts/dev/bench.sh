# ./dev bench
dev_bench() {
    die "./dev bench is not written yet"
}
