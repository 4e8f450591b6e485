// Stores shared by the model and file tests.
#pragma once

#include <cstdlib>
#include <cstring>
#include <dmuser/file_io.hpp>
#include <dmuser/ring.hpp>
#include <dmuser/unique_fd.hpp>
#include <fcntl.h>
#include <random>
#include <unistd.h>
#include <vector>

namespace test {

// Backed by a file; all I/O co_awaited on the serving thread's ring (the README's sketch).
struct file_store {
    dmuser::unique_fd fd;
    std::uint64_t bytes;

    std::uint64_t size() const { return bytes; }
    dmuser::task<std::error_code> read(std::uint64_t off, std::span<std::byte> out) {
        return dmuser::read_at(fd.get(), out, off);
    }
    dmuser::task<std::error_code> write(std::uint64_t off, std::span<const std::byte> in) {
        return dmuser::write_at(fd.get(), in, off);
    }
    dmuser::task<std::error_code> flush() {
        co_return (co_await dmuser::this_ring().fdatasync(fd.get())).error();
    }
    dmuser::task<std::error_code> discard(std::uint64_t off, std::uint64_t len) {
        co_return (co_await dmuser::this_ring().fallocate(
                       fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len))
            .error();
    }
};

inline file_store make_file_store(std::uint64_t bytes) {
    char tmpl[] = "/tmp/dmuser-store-XXXXXX";
    int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    ::unlink(tmpl);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(bytes)) == 0);
    return file_store{dmuser::unique_fd(fd), bytes};
}

// Memory, but every op is a coroutine that first waits a random few microseconds, so
// requests overtake each other; no write_zeroes (the SDK emulates it).
struct jittery_store {
    std::vector<std::byte> mem;
    explicit jittery_store(std::size_t n) : mem(n) {}
    std::uint64_t size() const { return mem.size(); }
    static dmuser::task<void> jitter() {
        thread_local std::minstd_rand rng(std::random_device{}());
        co_await dmuser::this_ring().timeout(std::chrono::microseconds(rng() % 200));
    }
    dmuser::task<void> read(std::uint64_t off, std::span<std::byte> out) {
        co_await jitter();
        std::memcpy(out.data(), mem.data() + off, out.size());
    }
    dmuser::task<void> write(std::uint64_t off, std::span<const std::byte> in) {
        co_await jitter();
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
    dmuser::task<void> flush() { co_await jitter(); }
    dmuser::task<std::error_code> discard(std::uint64_t off, std::uint64_t len) {
        co_await jitter();
        std::memset(mem.data() + off, 0, len);
        co_return std::error_code{};
    }
};

} // namespace test
