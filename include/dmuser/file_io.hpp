// dmuser/file_io.hpp: whole-buffer positional I/O on the calling thread's ring, for stores
// backed by files or block devices. A short transfer is continued, never reported as done.
#pragma once

#include "dmuser/ring.hpp"
#include "dmuser/task.hpp"

#include <cstring>
#include <span>
#include <system_error>

namespace dmuser {

// Reads out.size() bytes at offset; bytes past the end of the file read as zeros (a
// sparse or short backing file behaves like a zero-filled device).
inline task<std::error_code> read_at(int fd, std::span<std::byte> out, std::uint64_t offset) {
    ring& r = this_ring();
    while (!out.empty()) {
        io_result got = co_await r.read(fd, out, offset);
        if (got.res == -EINTR || got.res == -EAGAIN)
            continue;
        if (got.res < 0)
            co_return got.error();
        if (got.res == 0) {
            std::memset(out.data(), 0, out.size());
            break;
        }
        out = out.subspan(got.bytes());
        offset += got.bytes();
    }
    co_return std::error_code{};
}

inline task<std::error_code> write_at(int fd, std::span<const std::byte> in, std::uint64_t offset) {
    ring& r = this_ring();
    while (!in.empty()) {
        io_result got = co_await r.write(fd, in, offset);
        if (got.res == -EINTR || got.res == -EAGAIN)
            continue;
        if (got.res < 0)
            co_return got.error();
        if (got.res == 0)
            co_return std::make_error_code(std::errc::io_error);
        in = in.subspan(got.bytes());
        offset += got.bytes();
    }
    co_return std::error_code{};
}

} // namespace dmuser
