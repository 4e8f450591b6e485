// dmuser-mkimage: turns a raw disk image into the chunked compressed image that
// dmuser-compressed serves. See README.md, "Image format".
#include "cli.hpp"
#include "dmuser/unique_fd.hpp"
#include "image_reader.hpp"
#include "image_writer.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fs.h>
#include <string>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace dmuser::examples;

namespace {

constexpr const char* usage = R"(usage: dmuser-mkimage [OPTIONS] RAW IMAGE

Compresses the raw disk image (a file or a block device) RAW into IMAGE, a chunked
compressed image that dmuser-compressed serves as a read-only block device.

  --fast             lz4 instead of zstd: faster to make and to read, larger
  --level N          zstd level, 1-19 (default 3)
  --chunk-size SIZE  bytes of raw data per chunk, a power of two from 4K to 4M
                     (default 64K): smaller chunks cost less to read at random,
                     larger ones compress better
  --verify           read IMAGE back and compare it with RAW
  --quiet            no progress or summary
  -h, --help         this text

Each chunk carries a CRC-32C; a damaged chunk fails only its own range.
)";

int die(const std::string& msg) {
    fmt::print(stderr, "dmuser-mkimage: {}\n", msg);
    return 1;
}

// Size of a regular file or a block device.
std::optional<std::uint64_t> input_size(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) < 0)
        return std::nullopt;
    if (S_ISBLK(st.st_mode)) {
        std::uint64_t bytes = 0;
        if (::ioctl(fd, BLKGETSIZE64, &bytes) < 0)
            return std::nullopt;
        return bytes;
    }
    if (S_ISREG(st.st_mode))
        return static_cast<std::uint64_t>(st.st_size);
    return std::nullopt;
}

bool verify(int raw_fd, int image_fd, std::uint64_t size, std::string& why) {
    ImageIndex index;
    if (auto ec = ImageIndex::load(image_fd, index, why))
        return false;
    if (index.image_size() != size) {
        why = "image size differs from the raw image";
        return false;
    }
    ImageReader reader(image_fd, std::move(index), 4);
    std::vector<std::byte> a(1 << 20), b(1 << 20);
    for (std::uint64_t at = 0; at < size; at += a.size()) {
        const std::size_t n = std::min<std::uint64_t>(a.size(), size - at);
        if (pread_full(raw_fd, a.data(), n, at) != static_cast<long long>(n)) {
            why = fmt::format("cannot read the raw image at {:#x}", at);
            return false;
        }
        if (auto ec = reader.read(at, std::span(b.data(), n), why))
            return false;
        if (std::memcmp(a.data(), b.data(), n) != 0) {
            why = fmt::format("contents differ in the MiB at {:#x}", at);
            return false;
        }
    }
    return true;
}

} // namespace

int run(int argc, char** argv) {
    ImageOptions opt;
    bool quiet = false, check = false;
    std::vector<std::string_view> files;
    for (ArgWalker args(argc, argv); !args.done();) {
        if (args.flag("-h") || args.flag("--help")) {
            fmt::print("{}", usage);
            return 0;
        }
        if (args.flag("--fast")) {
            opt.codec = Codec::lz4;
        } else if (args.flag("--quiet")) {
            quiet = true;
        } else if (args.flag("--verify")) {
            check = true;
        } else if (auto v = args.value("--level")) {
            auto n = parse_count(*v, 1, 19);
            if (!n)
                return die(fmt::format("--level '{}': expected 1 to 19", *v));
            opt.level = static_cast<int>(*n);
        } else if (auto v = args.value("--chunk-size")) {
            auto n = parse_size(*v);
            if (!n || *n < min_chunk_size || *n > max_chunk_size || (*n & (*n - 1)) != 0)
                return die(
                    fmt::format("--chunk-size '{}': expected a power of two from 4K to 4M", *v));
            opt.chunk_size = static_cast<std::uint32_t>(*n);
        } else if (args.current().starts_with("-") && args.current() != "-") {
            return die(fmt::format("unknown option '{}' (see --help)", args.current()));
        } else {
            files.push_back(args.current());
            args.skip();
        }
    }
    if (files.size() != 2)
        return die("expected RAW and IMAGE (see --help)");

    const std::string raw_path(files[0]), image_path(files[1]);
    dmuser::unique_fd raw(::open(raw_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!raw)
        return die(fmt::format("cannot open {}: {}", raw_path, std::strerror(errno)));
    const auto size = input_size(raw.get());
    if (!size)
        return die(fmt::format("{} is neither a regular file nor a block device", raw_path));
    dmuser::unique_fd image(::open(image_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!image)
        return die(fmt::format("cannot create {}: {}", image_path, std::strerror(errno)));

    const auto start = std::chrono::steady_clock::now();
    std::uint64_t last_shown = 0;
    const bool show_progress = !quiet && ::isatty(STDERR_FILENO);
    auto progress = [&](std::uint64_t done) {
        if (!show_progress || (done - last_shown < (64u << 20) && done != *size))
            return;
        last_shown = done;
        fmt::print(stderr, "\r\033[K  {} of {}", human_size(done), human_size(*size));
    };
    ImageStats stats;
    std::string why;
    if (auto ec = write_image(raw.get(), *size, image.get(), opt, stats, why, progress))
        return die(fmt::format("{}: {}", image_path, why));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (check && !verify(raw.get(), image.get(), *size, why))
        return die(fmt::format("verify failed: {}", why));
    if (!quiet) {
        if (show_progress)
            fmt::print(stderr, "\r\033[K");
        fmt::print("{}: {} -> {} ({:.1f}%), {} chunks of {} ({} zero, {} stored raw), {}, "
                   "{:.1f} MiB/s{}\n",
                   image_path, human_size(stats.image_size), human_size(stats.file_size),
                   stats.image_size ? 100.0 * static_cast<double>(stats.file_size) /
                                          static_cast<double>(stats.image_size)
                                    : 0.0,
                   stats.chunks, human_size(opt.chunk_size), stats.zero_chunks, stats.raw_chunks,
                   opt.codec == Codec::zstd ? fmt::format("zstd level {}", opt.level) : "lz4",
                   secs > 0 ? static_cast<double>(stats.image_size) / secs / (1 << 20) : 0.0,
                   check ? ", verified" : "");
    }
    return 0;
}

int main(int argc, char** argv) {
    return run_main("dmuser-mkimage", run, argc, argv);
}
