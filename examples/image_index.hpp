// image_index.hpp: the header and chunk index of a compressed image, read and checked once at
// open, then used to find where each chunk's stored bytes lie in the file.
#pragma once

#include "image_format.hpp"

#include <cerrno>
#include <fmt/format.h>
#include <string>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace dmuser::examples {

// pread until `len` bytes or end of file; returns bytes read or -errno.
inline long long pread_full(int fd, void* buf, std::size_t len, std::uint64_t offset) {
    std::size_t done = 0;
    while (done < len) {
        const auto n = ::pread(fd, static_cast<char*>(buf) + done, len - done,
                               static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += static_cast<std::size_t>(n);
    }
    return static_cast<long long>(done);
}

class ImageIndex {
public:
    // Reads and validates the header and index of the image open on `fd`.
    static std::error_code load(int fd, ImageIndex& out, std::string& why) {
        auto fail = [&](std::errc e, std::string msg) {
            why = std::move(msg);
            return std::make_error_code(e);
        };
        struct stat st {};
        if (::fstat(fd, &st) < 0)
            return fail(static_cast<std::errc>(errno), "cannot stat the image");
        const auto file_size = static_cast<std::uint64_t>(st.st_size);
        ImageHeader h{};
        const auto n = pread_full(fd, &h, sizeof h, 0);
        if (n < 0)
            return fail(static_cast<std::errc>(-n), "cannot read the image header");
        if (static_cast<std::size_t>(n) < sizeof h)
            return fail(std::errc::invalid_argument, "file too short for an image header");
        if (auto problem = header_problem(h, file_size))
            return fail(std::errc::invalid_argument, *problem);
        std::vector<ChunkEntry> entries(h.chunk_count);
        const auto bytes = entries.size() * sizeof(ChunkEntry);
        if (pread_full(fd, entries.data(), bytes, h.index_offset) != static_cast<long long>(bytes))
            return fail(std::errc::io_error, "cannot read the chunk index");
        if (index_checksum(entries) != h.index_crc)
            return fail(std::errc::bad_message, "chunk index checksum mismatch");
        for (std::uint64_t i = 0; i < entries.size(); ++i)
            if (auto problem = entry_problem(h, entries[i], i))
                return fail(std::errc::bad_message, *problem);
        out.header_ = h;
        out.entries_ = std::move(entries);
        return {};
    }

    const ImageHeader& header() const { return header_; }
    std::uint64_t image_size() const { return header_.image_size; }
    std::uint32_t chunk_size() const { return header_.chunk_size; }
    std::uint64_t chunk_count() const { return header_.chunk_count; }
    const ChunkEntry& entry(std::uint64_t chunk) const { return entries_[chunk]; }
    std::uint32_t chunk_length(std::uint64_t chunk) const {
        return examples::chunk_length(header_, chunk);
    }
    // Bytes the chunks take in the file, for a compression ratio.
    std::uint64_t stored_bytes() const {
        std::uint64_t sum = 0;
        for (const auto& e : entries_)
            sum += e.stored_size;
        return sum;
    }

private:
    ImageHeader header_{};
    std::vector<ChunkEntry> entries_;
};

} // namespace dmuser::examples
