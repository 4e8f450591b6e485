# ./dev vm
dev_vm() {
    die "./dev vm is not written yet"
}
