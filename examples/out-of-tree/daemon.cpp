// A daemon written outside this tree, as a user would: only the installed SDK and
// `pkg-config --cflags --libs dmuser`. Creates /dev/mapper/NAME, serves it from memory until
// SIGINT/SIGTERM, removes it.
//
//   g++ -O2 daemon.cpp -o my-ramdisk $(pkg-config --cflags --libs dmuser)
//   ./my-ramdisk NAME SIZE_MIB
#include <cstring>
#include <dmuser/device.hpp>
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
    try {
        ramdisk disk{std::vector<std::byte>(std::stoull(argv[2]) << 20)};
        dmuser::UserTable table;
        table.name = argv[1];
        table.sectors = disk.size() / 512;
        table.no_flush = table.no_discard = table.no_secure_erase = true;
        auto device = dmuser::Device::create(table); // removed when it goes out of scope
        fmt::print("serving {}\n", device.path());
        std::fflush(stdout);
        return dmuser::serve(disk, {.name = table.control_name(), .threads = 2});
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}: {}\n", argv[0], e.what());
        return 1;
    }
}
