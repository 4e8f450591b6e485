// dmuser-file: a block device backed by a file or another block device. Every backing I/O is
// an io_uring operation on the ring that read the request, so one io_uring_enter carries the
// channel's reads, the backing reads/writes and the responses.
//
// Durability: FLUSH (PREFLUSH) is fdatasync; a FUA write goes through a second descriptor
// opened O_DSYNC, so only that write waits for the disk. DISCARD punches a hole;
// WRITE_ZEROES asks for FALLOC_FL_ZERO_RANGE, then a punched hole, then plain writes of zeros,
// whichever the backing file system accepts first.
#include "cli.hpp"
#include "daemon.hpp"
#include "dmuser/file_io.hpp"
#include "dmuser/unique_fd.hpp"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <memory>
#include <span>
#include <string>
#include <sys/ioctl.h>
#include <sys/stat.h>

using namespace dmuser::examples;
using dmuser::task;

namespace {

constexpr const char* usage =
    R"(usage: dmuser-file --name NAME [--size SIZE] [--direct] [OPTIONS] FILE

Serves /dev/mapper/NAME from FILE, a regular file or a block device. Data written and
flushed (fsync, FUA, sync) is in FILE when the request completes, and survives the
daemon: start it again with --attach while the device exists, or without it later.

  FILE               the backing store
  --size SIZE        device size (K/M/G/T suffixes). A missing FILE is created sparse at
                     that size, a shorter one is extended; default: FILE's size
  --direct           open FILE with O_DIRECT (bypass the page cache)

)";

// Page-aligned memory, for the zeros written with O_DIRECT. Request payloads need none:
// the SDK hands every store page-aligned spans.
struct FreeAligned {
    void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte[], FreeAligned>;

class FileStore {
public:
    FileStore(dmuser::unique_fd fd, dmuser::unique_fd dsync_fd, std::uint64_t bytes)
        : fd_(std::move(fd)), dsync_fd_(std::move(dsync_fd)), bytes_(bytes) {}

    std::uint64_t size() const { return bytes_; }

    task<std::error_code> read(std::uint64_t off, std::span<std::byte> out) {
        return dmuser::read_at(fd_.get(), out, off);
    }
    task<std::error_code> write(std::uint64_t off, std::span<const std::byte> in) {
        return write_to(fd_.get(), off, in);
    }
    task<std::error_code> write_fua(std::uint64_t off, std::span<const std::byte> in) {
        return write_to(dsync_fd_.get(), off, in);
    }
    task<std::error_code> flush() {
        co_return (co_await dmuser::this_ring().fdatasync(fd_.get())).error();
    }
    task<std::error_code> discard(std::uint64_t off, std::uint64_t len) {
        co_return (co_await dmuser::this_ring().fallocate(
                       fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len))
            .error();
    }
    task<std::error_code> write_zeroes(std::uint64_t off, std::uint64_t len) {
        auto& r = dmuser::this_ring();
        if (zero_range_works_) {
            auto got = co_await r.fallocate(fd_.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                                            off, len);
            if (got.ok())
                co_return std::error_code{};
            if (got.res != -EOPNOTSUPP && got.res != -EINVAL)
                co_return got.error();
            zero_range_works_ = false; // tmpfs, for one: ask once
        }
        if (punch_works_) {
            auto got = co_await r.fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                            off, len);
            if (got.ok())
                co_return std::error_code{};
            if (got.res != -EOPNOTSUPP && got.res != -EINVAL)
                co_return got.error();
            punch_works_ = false;
        }
        const std::size_t step = std::min<std::uint64_t>(len, 1u << 20);
        auto zeros = aligned(step);
        std::memset(zeros.get(), 0, step);
        for (std::uint64_t done = 0; done < len;) {
            const std::size_t n = std::min<std::uint64_t>(step, len - done);
            if (auto ec =
                    co_await dmuser::write_at(fd_.get(), std::span(zeros.get(), n), off + done))
                co_return ec;
            done += n;
        }
        co_return std::error_code{};
    }

private:
    static AlignedBuffer aligned(std::size_t len) {
        auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, (len + 4095) / 4096 * 4096));
        if (!p)
            throw std::bad_alloc();
        return AlignedBuffer(p);
    }
    task<std::error_code> write_to(int fd, std::uint64_t off, std::span<const std::byte> in) {
        return dmuser::write_at(fd, in, off);
    }

    dmuser::unique_fd fd_, dsync_fd_;
    std::uint64_t bytes_;
    // Learnt from the first refusal; a stale true only costs one more refused call.
    std::atomic<bool> zero_range_works_{true}, punch_works_{true};
};

dmuser::unique_fd open_backing(const std::string& path, int flags, bool create) {
    int fd = ::open(path.c_str(), flags | O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0644);
    if (fd < 0) {
        const int err = errno;
        if (err == EINVAL && (flags & O_DIRECT))
            throw std::runtime_error(fmt::format(
                "cannot open {} with O_DIRECT: its file system does not support it", path));
        throw std::runtime_error(fmt::format("cannot open {}: {}", path, std::strerror(err)));
    }
    return dmuser::unique_fd(fd);
}

int run(int argc, char** argv) {
    DaemonOptions opt;
    std::optional<std::uint64_t> size;
    bool direct = false;
    std::string path;
    for (ArgWalker args(argc, argv); !args.done();) {
        if (args.flag("-h") || args.flag("--help")) {
            fmt::print("{}{}", usage, common_help);
            return 0;
        }
        if (auto v = args.value("--size")) {
            size = size_option("--size", *v);
        } else if (args.flag("--direct")) {
            direct = true;
        } else if (parse_common_option(args, opt)) {
        } else if (args.current().starts_with("-") || !path.empty()) {
            throw std::invalid_argument(
                fmt::format("unexpected argument '{}' (see --help)", args.current()));
        } else {
            path = args.current();
            args.skip();
        }
    }
    if (path.empty())
        throw std::invalid_argument("FILE is required (see --help)");
    if (size)
        if (auto why = size_problem(*size))
            throw std::invalid_argument(*why);

    const int direct_flag = direct ? O_DIRECT : 0;
    auto fd = open_backing(path, direct_flag, size.has_value());
    struct stat st {};
    if (::fstat(fd.get(), &st) < 0)
        throw std::runtime_error(fmt::format("cannot stat {}: {}", path, std::strerror(errno)));
    std::uint64_t have = 0;
    if (S_ISBLK(st.st_mode)) {
        if (::ioctl(fd.get(), BLKGETSIZE64, &have) < 0)
            throw std::runtime_error(fmt::format("cannot size {}: {}", path, std::strerror(errno)));
        if (size && *size > have)
            throw std::invalid_argument(fmt::format("--size {} is larger than {} ({})",
                                                    human_size(*size), path, human_size(have)));
    } else if (S_ISREG(st.st_mode)) {
        have = static_cast<std::uint64_t>(st.st_size);
        if (size && *size > have && ::ftruncate(fd.get(), static_cast<off_t>(*size)) < 0)
            throw std::runtime_error(fmt::format("cannot extend {} to {}: {}", path,
                                                 human_size(*size), std::strerror(errno)));
    } else {
        throw std::invalid_argument(
            fmt::format("{} is neither a regular file nor a block device", path));
    }
    const std::uint64_t bytes = size ? *size : have;
    if (auto why = size_problem(bytes))
        throw std::invalid_argument(fmt::format("{}: {}", path, *why));
    auto dsync = open_backing(path, direct_flag | O_DSYNC, false);

    FileStore store(std::move(fd), std::move(dsync), bytes);
    return run_daemon("dmuser-file", store, opt,
                      fmt::format("{}{}", path, direct ? " (O_DIRECT)" : ""));
}

} // namespace

int main(int argc, char** argv) {
    return run_main("dmuser-file", run, argc, argv);
}
