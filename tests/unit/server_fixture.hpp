// A server running on its own thread against a fake kernel, and stores for the tests.
#pragma once

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <dmuser/server.hpp>
#include <dmuser/testing/fake_kernel.hpp>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace test {

inline dmuser::server_options quiet(dmuser::server_options o) {
    o.handle_signals = false;
    o.io_flusher = false;
    return o;
}

template <typename Store>
class running_server {
public:
    running_server(Store& store, dmuser::channel_source& k, dmuser::server_options o = {})
        : srv(store, k, quiet(std::move(o))) {
        thread_ = std::thread([this] { rc_ = srv.run(); });
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!srv.ready() && !finished() && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        REQUIRE(srv.ready());
    }
    ~running_server() {
        if (thread_.joinable()) {
            srv.stop();
            thread_.join();
        }
    }
    int stop() {
        srv.stop();
        return join();
    }
    int join() {
        thread_.join();
        return rc_;
    }
    bool finished() const { return rc_ != -1; }

    dmuser::server<Store> srv;

private:
    std::thread thread_;
    std::atomic<int> rc_{-1};
};

// A thread-safe (for disjoint ranges) memory store with every optional op.
struct mem_store {
    std::vector<std::byte> mem;
    std::atomic<int> flushes{0};
    explicit mem_store(std::size_t bytes) : mem(bytes) {}
    std::uint64_t size() const { return mem.size(); }
    void read(std::uint64_t off, std::span<std::byte> out) {
        std::memcpy(out.data(), mem.data() + off, out.size());
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
    void flush() { ++flushes; }
    void discard(std::uint64_t off, std::uint64_t len) { std::memset(mem.data() + off, 0, len); }
};

// The ramdisk of the README: lends its pages for READs.
struct lending_store : mem_store {
    using mem_store::mem_store;
    std::span<const std::byte> read_view(std::uint64_t off, std::uint64_t len) const {
        return {mem.data() + off, len};
    }
};

// Lends its pages for WRITEs too, and counts the writes that came the copying way.
struct landing_store : lending_store {
    using lending_store::lending_store;
    std::atomic<int> copied_writes{0};
    std::atomic<int> landed_writes{0};
    void write(std::uint64_t off, std::span<const std::byte> in) {
        ++copied_writes;
        lending_store::write(off, in);
    }
    std::span<std::byte> write_view(std::uint64_t off, std::uint64_t len) {
        ++landed_writes;
        return {mem.data() + off, len};
    }
};

inline std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    std::uint32_t x = seed * 2654435761u + 1;
    for (auto& b : v) {
        x = x * 1664525u + 1013904223u;
        b = static_cast<std::byte>(x >> 24);
    }
    return v;
}

} // namespace test
