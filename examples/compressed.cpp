// dmuser-compressed: serves an image made by dmuser-mkimage, decompressing each chunk when it
// is first read and keeping a few in a per-thread LRU cache. The stored bytes are read through
// io_uring on the request's ring. A chunk whose checksum or decompression fails fails only the
// requests that touch it, and is logged with its offsets.
//
// Read-only, unless --overlay FILE: then writes go copy-on-write to that sparse file, sector
// by sector (overlay.hpp), and reads take each sector from the overlay when it has it.
#include "cli.hpp"
#include "daemon.hpp"
#include "dmuser/unique_fd.hpp"
#include "image_index.hpp"
#include "image_reader.hpp"
#include "image_store.hpp"
#include "overlay.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <memory>
#include <span>
#include <string>
#include <vector>

using namespace dmuser::examples;

namespace {

constexpr const char* usage =
    R"(usage: dmuser-compressed --name NAME [--overlay FILE] [--cache N] [OPTIONS] IMAGE

Serves /dev/mapper/NAME from IMAGE, a compressed image made by dmuser-mkimage, read-only.
Chunks are decompressed when first read; each server thread caches the last N.
A damaged chunk fails the reads that touch it (logged with its offsets); the rest of the
device reads normally.

  IMAGE              the image
  --overlay FILE     make the device writable: written sectors go to FILE (created sparse
                     if missing), whose map survives restarts once flushed; reads prefer it
  --cache N          decompressed chunks cached per thread (default 32)

)";

int run(int argc, char** argv) {
    DaemonOptions opt;
    std::string image_path, overlay_path;
    unsigned cache_chunks = 32;
    for (ArgWalker args(argc, argv); !args.done();) {
        if (args.flag("-h") || args.flag("--help")) {
            fmt::print("{}{}", usage, common_help);
            return 0;
        }
        if (auto v = args.value("--overlay")) {
            overlay_path = *v;
        } else if (auto v = args.value("--cache")) {
            auto n = parse_count(*v, 1, 1 << 16);
            if (!n)
                throw std::invalid_argument(fmt::format("--cache '{}': expected 1 to 65536", *v));
            cache_chunks = *n;
        } else if (parse_common_option(args, opt)) {
        } else if (args.current().starts_with("-") || !image_path.empty()) {
            throw std::invalid_argument(
                fmt::format("unexpected argument '{}' (see --help)", args.current()));
        } else {
            image_path = args.current();
            args.skip();
        }
    }
    if (image_path.empty())
        throw std::invalid_argument("IMAGE is required (see --help)");
    dmuser::unique_fd image(::open(image_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!image)
        throw std::runtime_error(
            fmt::format("cannot open {}: {}", image_path, std::strerror(errno)));
    ImageIndex index;
    std::string why;
    if (ImageIndex::load(image.get(), index, why))
        throw std::runtime_error(fmt::format("{}: {}", image_path, why));
    const std::uint64_t device_size = (index.image_size() + 511) / 512 * 512;
    std::unique_ptr<Overlay> overlay;
    if (!overlay_path.empty())
        overlay = std::make_unique<Overlay>(overlay_path, device_size, index.header().header_crc);
    opt.read_only = !overlay;
    const auto what =
        fmt::format("{} ({}, {} chunks of {}){}", image_path, codec_name(index.header().codec),
                    index.chunk_count(), human_size(index.chunk_size()),
                    overlay ? fmt::format(", overlay {}", overlay_path) : ", read-only");
    ImageStore store(std::move(image), std::move(index), cache_chunks, std::move(overlay));
    return run_daemon("dmuser-compressed", store, opt, what);
}

} // namespace

int main(int argc, char** argv) {
    return run_main("dmuser-compressed", run, argc, argv);
}
