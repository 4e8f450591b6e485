// image_writer.hpp: turns a raw image into a compressed one (what dmuser-mkimage runs).
// The chunks are streamed out after a placeholder header; the index follows them, and the
// header is written last, so a crash leaves a file that fails its header check.
#pragma once

#include "chunk_codec.hpp"
#include "image_index.hpp"

#include <cerrno>
#include <fmt/format.h>
#include <functional>
#include <string>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace dmuser::examples {

struct ImageOptions {
    Codec codec = Codec::zstd;
    int level = 3; // zstd level
    std::uint32_t chunk_size = 64 * 1024;
};

struct ImageStats {
    std::uint64_t image_size = 0;
    std::uint64_t file_size = 0;
    std::uint64_t chunks = 0, zero_chunks = 0, raw_chunks = 0;
};

inline std::error_code pwrite_full(int fd, const void* buf, std::size_t len, std::uint64_t offset) {
    std::size_t done = 0;
    while (done < len) {
        const auto n = ::pwrite(fd, static_cast<const char*>(buf) + done, len - done,
                                static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return std::error_code(errno, std::generic_category());
        }
        done += static_cast<std::size_t>(n);
    }
    return {};
}

// Compresses `image_size` bytes read from `in` into the image written to `out` (truncated
// first). `progress(done_bytes)` is called after every chunk when given.
inline std::error_code write_image(int in, std::uint64_t image_size, int out,
                                   const ImageOptions& opt, ImageStats& stats, std::string& why,
                                   const std::function<void(std::uint64_t)>& progress = {}) {
    auto fail = [&](std::error_code ec, std::string msg) {
        why = fmt::format("{}: {}", msg, ec.message());
        return ec;
    };
    const auto cs = opt.chunk_size;
    if (cs < min_chunk_size || cs > max_chunk_size || (cs & (cs - 1)) != 0) {
        why = fmt::format("chunk size {} is not a power of two in [{}, {}]", cs, min_chunk_size,
                          max_chunk_size);
        return std::make_error_code(std::errc::invalid_argument);
    }
    if (::ftruncate(out, 0) < 0)
        return fail({errno, std::generic_category()}, "cannot truncate the output");

    ImageHeader h{};
    std::copy(std::begin(image_magic), std::end(image_magic), h.magic);
    h.version = image_version;
    h.header_size = sizeof(ImageHeader);
    h.image_size = image_size;
    h.chunk_size = cs;
    h.codec = opt.codec;
    h.chunk_count = (image_size + cs - 1) / cs;

    ChunkCodec codec(opt.codec, opt.level);
    std::vector<ChunkEntry> index(h.chunk_count);
    std::vector<std::byte> raw(cs), stored;
    std::uint64_t at = sizeof(ImageHeader);
    stats = {};
    for (std::uint64_t i = 0; i < h.chunk_count; ++i) {
        const std::uint32_t len = chunk_length(h, i);
        const auto n = pread_full(in, raw.data(), len, i * cs);
        if (n < 0)
            return fail({static_cast<int>(-n), std::generic_category()},
                        fmt::format("reading the raw image at {:#x}", i * cs));
        if (n != len) {
            why =
                fmt::format("the raw image ended at {} bytes, expected {}", i * cs + n, image_size);
            return std::make_error_code(std::errc::io_error);
        }
        index[i] = codec.encode(std::span(raw.data(), len), stored);
        index[i].offset = at;
        if (!stored.empty())
            if (auto ec = pwrite_full(out, stored.data(), stored.size(), at))
                return fail(ec, "writing the image");
        at += stored.size();
        stats.zero_chunks += index[i].kind == ChunkKind::zero;
        stats.raw_chunks += index[i].kind == ChunkKind::raw;
        if (progress)
            progress(i * cs + len);
    }
    h.index_offset = at;
    h.index_crc = index_checksum(index);
    h.header_crc = header_checksum(h);
    if (auto ec = pwrite_full(out, index.data(), index.size() * sizeof(ChunkEntry), at))
        return fail(ec, "writing the index");
    if (::fdatasync(out) < 0)
        return fail({errno, std::generic_category()}, "syncing the image");
    if (auto ec = pwrite_full(out, &h, sizeof h, 0))
        return fail(ec, "writing the header");
    if (::fdatasync(out) < 0)
        return fail({errno, std::generic_category()}, "syncing the image");
    stats.image_size = image_size;
    stats.file_size = at + index.size() * sizeof(ChunkEntry);
    stats.chunks = h.chunk_count;
    return {};
}

} // namespace dmuser::examples
