// image_format.hpp: the on-disk layout of a dmuser compressed image (see README.md, "Image
// format"). A fixed header, the chunks, then an index with one entry per chunk. All integers
// little-endian; every chunk, the index and the header carry a CRC-32C.
#pragma once

#include "crc32c.hpp"

#include <cstdint>
#include <cstring>
#include <fmt/format.h>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace dmuser::examples {

enum class Codec : std::uint32_t { zstd = 1, lz4 = 2 };

// How one chunk is stored.
enum class ChunkKind : std::uint32_t {
    zero = 0,       // all zero bytes: nothing stored
    raw = 1,        // stored as is (compression did not make it smaller)
    compressed = 2, // compressed with the image's codec
};

inline constexpr char image_magic[8] = {'D', 'M', 'U', 'I', 'M', 'G', '0', '1'};
inline constexpr std::uint32_t image_version = 1;
inline constexpr std::uint32_t min_chunk_size = 4096;
inline constexpr std::uint32_t max_chunk_size = 4u << 20;

struct ImageHeader {
    char magic[8];
    std::uint32_t version;
    std::uint32_t header_size;  // sizeof(ImageHeader): chunks start here
    std::uint64_t image_size;   // bytes of the raw image
    std::uint32_t chunk_size;   // bytes of raw data per chunk (the last one may be shorter)
    Codec codec;                //
    std::uint64_t chunk_count;  // = ceil(image_size / chunk_size)
    std::uint64_t index_offset; // where the index starts in the file
    std::uint32_t index_crc;    // CRC-32C of the whole index
    std::uint32_t header_crc;   // CRC-32C of this header with header_crc = 0
};
static_assert(sizeof(ImageHeader) == 56);

struct ChunkEntry {
    std::uint64_t offset;      // where the stored bytes start in the file
    std::uint32_t stored_size; // bytes stored (0 for a zero chunk)
    std::uint32_t crc;         // CRC-32C of the stored bytes
    ChunkKind kind;
    std::uint32_t reserved;
};
static_assert(sizeof(ChunkEntry) == 24);

inline std::uint32_t header_checksum(ImageHeader h) {
    h.header_crc = 0;
    return crc32c(std::as_bytes(std::span(&h, 1)));
}

inline std::uint32_t index_checksum(std::span<const ChunkEntry> index) {
    return crc32c(std::as_bytes(index));
}

inline const char* codec_name(Codec c) {
    switch (c) {
    case Codec::zstd:
        return "zstd";
    case Codec::lz4:
        return "lz4";
    }
    return "unknown";
}

// Raw bytes in chunk `i` (all chunks are chunk_size, except maybe the last).
inline std::uint32_t chunk_length(const ImageHeader& h, std::uint64_t i) {
    const std::uint64_t start = i * h.chunk_size;
    return static_cast<std::uint32_t>(std::min<std::uint64_t>(h.chunk_size, h.image_size - start));
}

// Why a header read from a file is not a usable image header, or nullopt when it is.
inline std::optional<std::string> header_problem(const ImageHeader& h, std::uint64_t file_size) {
    if (std::memcmp(h.magic, image_magic, sizeof image_magic) != 0)
        return "not a dmuser compressed image (bad magic)";
    if (h.version != image_version)
        return fmt::format("image format version {} is not supported (this build reads {})",
                           h.version, image_version);
    if (h.header_crc != header_checksum(h))
        return "image header checksum mismatch";
    if (h.header_size != sizeof(ImageHeader))
        return "image header has an unexpected size";
    if (h.codec != Codec::zstd && h.codec != Codec::lz4)
        return fmt::format("unknown codec {}", static_cast<std::uint32_t>(h.codec));
    if (h.chunk_size < min_chunk_size || h.chunk_size > max_chunk_size ||
        (h.chunk_size & (h.chunk_size - 1)) != 0)
        return fmt::format("chunk size {} is not a power of two in [{}, {}]", h.chunk_size,
                           min_chunk_size, max_chunk_size);
    if (h.chunk_count != (h.image_size + h.chunk_size - 1) / h.chunk_size)
        return "chunk count does not match image size";
    if (h.index_offset > file_size ||
        h.chunk_count > (file_size - h.index_offset) / sizeof(ChunkEntry))
        return "image is truncated (index runs past the end of the file)";
    return std::nullopt;
}

// Why an entry cannot be right for chunk `i`, or nullopt. Checked once, at open.
inline std::optional<std::string> entry_problem(const ImageHeader& h, const ChunkEntry& e,
                                                std::uint64_t i) {
    const std::uint32_t len = chunk_length(h, i);
    switch (e.kind) {
    case ChunkKind::zero:
        if (e.stored_size != 0)
            return fmt::format("chunk {}: zero chunk with stored bytes", i);
        return std::nullopt;
    case ChunkKind::raw:
        if (e.stored_size != len)
            return fmt::format("chunk {}: raw chunk of {} bytes, expected {}", i, e.stored_size,
                               len);
        break;
    case ChunkKind::compressed:
        if (e.stored_size == 0 || e.stored_size > 2 * h.chunk_size + 4096)
            return fmt::format("chunk {}: implausible compressed size {}", i, e.stored_size);
        break;
    default:
        return fmt::format("chunk {}: unknown kind {}", i, static_cast<std::uint32_t>(e.kind));
    }
    if (e.offset < h.header_size || e.offset > h.index_offset ||
        e.stored_size > h.index_offset - e.offset)
        return fmt::format("chunk {}: stored bytes lie outside the data area", i);
    return std::nullopt;
}

} // namespace dmuser::examples
