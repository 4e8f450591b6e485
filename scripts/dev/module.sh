# ./dev module
dev_module() {
    die "./dev module is not written yet"
}
