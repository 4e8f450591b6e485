# ./dev build: configure and build the C++ tree in build/.
dev_build() {
    meson_build build "$@"
}
