// dmuser-ramdisk: a block device kept in this process's memory. READs are answered straight
// from that memory (read_view: one writev of header + pages, no copy), large WRITEs are
// read straight into it (write_view); DISCARD and WRITE_ZEROES hand whole pages back to
// the kernel.
#include "cli.hpp"
#include "daemon.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <span>
#include <string>
#include <sys/mman.h>

using namespace dmuser::examples;

namespace {

constexpr const char* usage = R"(usage: dmuser-ramdisk --name NAME --size SIZE [OPTIONS]

Serves /dev/mapper/NAME from SIZE bytes of this process's memory (allocated as it is
written; discarded ranges are given back). The contents go when the daemon does.

  --size SIZE        device size: 512-byte multiple, K/M/G/T suffixes (e.g. 256M)

)";

class RamStore {
public:
    explicit RamStore(std::uint64_t bytes) : bytes_(bytes) {
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            throw std::system_error(errno, std::generic_category(),
                                    fmt::format("cannot reserve {} of memory", human_size(bytes)));
        mem_ = static_cast<std::byte*>(p);
    }
    RamStore(const RamStore&) = delete;
    RamStore& operator=(const RamStore&) = delete;
    ~RamStore() { ::munmap(mem_, bytes_); }

    std::uint64_t size() const { return bytes_; }
    void read(std::uint64_t off, std::span<std::byte> out) const {
        std::memcpy(out.data(), mem_ + off, out.size());
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        std::memcpy(mem_ + off, in.data(), in.size());
    }
    std::span<const std::byte> read_view(std::uint64_t off, std::uint64_t len) const {
        return {mem_ + off, len};
    }
    std::span<std::byte> write_view(std::uint64_t off, std::uint64_t len) {
        return {mem_ + off, len};
    }
    std::error_code discard(std::uint64_t off, std::uint64_t len) { return zero(off, len); }
    std::error_code write_zeroes(std::uint64_t off, std::uint64_t len) { return zero(off, len); }

private:
    // Whole pages go back to the kernel (they read as zeros again), the edges are cleared.
    std::error_code zero(std::uint64_t off, std::uint64_t len) {
        constexpr std::uint64_t page = 4096;
        const std::uint64_t first = (off + page - 1) / page * page;
        const std::uint64_t last = (off + len) / page * page;
        if (first >= last) {
            std::memset(mem_ + off, 0, len);
            return {};
        }
        std::memset(mem_ + off, 0, first - off);
        std::memset(mem_ + last, 0, off + len - last);
        if (::madvise(mem_ + first, last - first, MADV_DONTNEED) != 0)
            std::memset(mem_ + first, 0, last - first);
        return {};
    }

    std::byte* mem_ = nullptr;
    std::uint64_t bytes_;
};

int run(int argc, char** argv) {
    DaemonOptions opt;
    std::optional<std::uint64_t> size;
    for (ArgWalker args(argc, argv); !args.done();) {
        if (args.flag("-h") || args.flag("--help")) {
            fmt::print("{}{}", usage, common_help);
            return 0;
        }
        if (auto v = args.value("--size")) {
            size = size_option("--size", *v);
        } else if (!parse_common_option(args, opt)) {
            throw std::invalid_argument(
                fmt::format("unknown argument '{}' (see --help)", args.current()));
        }
    }
    if (!size)
        throw std::invalid_argument("--size is required (see --help)");
    if (auto why = size_problem(*size))
        throw std::invalid_argument(*why);
    RamStore store(*size);
    return run_daemon("dmuser-ramdisk", store, opt, "memory");
}

} // namespace

int main(int argc, char** argv) {
    return run_main("dmuser-ramdisk", run, argc, argv);
}
