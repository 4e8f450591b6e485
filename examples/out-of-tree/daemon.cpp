// A daemon written outside this tree, as a user would: only the installed SDK and
// `pkg-config --cflags --libs dmuser`. Creates /dev/mapper/NAME, serves it from memory until
// SIGINT/SIGTERM, removes it.
//
//   g++ -O2 daemon.cpp -o my-ramdisk $(pkg-config --cflags --libs dmuser)
//   ./my-ramdisk NAME SIZE_MIB
#include <cstring>
#include <dmuser/dmuser.hpp>
#include <string>
#include <vector>

struct ramdisk {
    std::vector<std::byte> mem;

    std::uint64_t size() const { return mem.size(); }
    void read(std::uint64_t off, std::span<std::byte> out) {
        std::memcpy(out.data(), mem.data() + off, out.size());
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
};

int main(int argc, char** argv) {
    if (argc != 3) {
        fmt::print(stderr, "usage: {} NAME SIZE_MIB\n", argv[0]);
        return 2;
    }
    ramdisk disk{std::vector<std::byte>(std::stoull(argv[2]) << 20)};
    dmuser::device_options o{.name = argv[1], .server = {.threads = 2}};
    o.on_ready = [](const dmuser::device& dev, std::size_t) {
        fmt::print("serving {}\n", dev.path());
        std::fflush(stdout);
    };
    return dmuser::serve_device(disk, std::move(o));
}
