// image_reader.hpp: random-access reads of a compressed image with blocking pread, one chunk
// decompressed on demand and kept in a small LRU cache. The daemon reads stored bytes through
// io_uring instead and shares everything else (index, codec, cache) with this class.
#pragma once

#include "chunk_cache.hpp"
#include "chunk_codec.hpp"
#include "image_index.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace dmuser::examples {

// Where the failure of a chunk is, in words a log reader can act on.
inline std::string describe_chunk(const ImageIndex& index, std::uint64_t chunk) {
    const auto& e = index.entry(chunk);
    return fmt::format("chunk {} (image bytes {:#x}..{:#x}, file offset {:#x}, {} stored bytes)",
                       chunk, chunk * index.chunk_size(),
                       chunk * index.chunk_size() + index.chunk_length(chunk), e.offset,
                       e.stored_size);
}

class ImageReader {
public:
    // `fd` stays the caller's; `cache_chunks` decompressed chunks are kept.
    ImageReader(int fd, ImageIndex index, std::size_t cache_chunks = 16)
        : fd_(fd), index_(std::move(index)), codec_(index_.header().codec), cache_(cache_chunks) {}

    const ImageIndex& index() const { return index_; }
    const ChunkCache& cache() const { return cache_; }

    // Copies the image's bytes at [offset, offset + out.size()) into `out`; bytes past the end
    // of the image read as zeros. A corrupt chunk fails the read with EBADMSG and `why` naming
    // the chunk and its offsets; the chunks around it stay readable.
    std::error_code read(std::uint64_t offset, std::span<std::byte> out, std::string& why) {
        while (!out.empty()) {
            if (offset >= index_.image_size()) {
                std::fill(out.begin(), out.end(), std::byte{0});
                return {};
            }
            const std::uint64_t chunk = offset / index_.chunk_size();
            const std::uint64_t within = offset % index_.chunk_size();
            const std::size_t n =
                std::min<std::uint64_t>(out.size(), index_.chunk_length(chunk) - within);
            const std::vector<std::byte>* data = nullptr;
            if (auto ec = load(chunk, data, why))
                return ec;
            std::copy_n(data->begin() + static_cast<std::ptrdiff_t>(within), n, out.begin());
            out = out.subspan(n);
            offset += n;
        }
        return {};
    }

private:
    std::error_code load(std::uint64_t chunk, const std::vector<std::byte>*& data,
                         std::string& why) {
        if ((data = cache_.find(chunk)))
            return {};
        const auto& e = index_.entry(chunk);
        stored_.resize(e.stored_size);
        if (e.stored_size > 0) {
            const auto n = pread_full(fd_, stored_.data(), e.stored_size, e.offset);
            if (n < 0) {
                why = fmt::format("{}: read failed", describe_chunk(index_, chunk));
                return std::error_code(static_cast<int>(-n), std::generic_category());
            }
            stored_.resize(static_cast<std::size_t>(n));
        }
        auto& out = cache_.insert(chunk, index_.chunk_length(chunk));
        if (auto ec = codec_.decode(e, stored_, out, why)) {
            cache_.drop(chunk);
            why = fmt::format("{}: {}", describe_chunk(index_, chunk), why);
            return ec;
        }
        data = &out;
        return {};
    }

    int fd_;
    ImageIndex index_;
    ChunkCodec codec_;
    ChunkCache cache_;
    std::vector<std::byte> stored_;
};

} // namespace dmuser::examples
