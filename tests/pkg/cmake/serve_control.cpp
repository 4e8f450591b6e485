// serve-control CONTROL SIZE_MIB: serve /dev/dm-user/CONTROL from memory. It makes no
// device-mapper calls (root made the device, with a table naming this daemon's group), so
// it needs no privilege at all: what the udev rule and the table's group= are for.
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
        fmt::print(stderr, "usage: {} CONTROL SIZE_MIB\n", argv[0]);
        return 2;
    }
    ramdisk disk{std::vector<std::byte>(std::stoull(argv[2]) << 20)};
    // PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE, which an unprivileged daemon has not.
    return dmuser::serve(disk, {.name = argv[1], .threads = 1, .io_flusher = false});
}
