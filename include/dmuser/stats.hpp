// dmuser/stats.hpp: per-operation counters. Each server thread writes its own block with
// plain relaxed stores (no locked instructions on the hot path); readers sum the blocks.
#pragma once

#include "dmuser/protocol.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <fmt/format.h>
#include <string>

namespace dmuser {

// Counter buckets: READ, WRITE, FLUSH, DISCARD, SECURE_ERASE, WRITE_ZEROES, other.
inline constexpr std::size_t stat_buckets = 7;
inline constexpr std::size_t stat_bucket(std::uint64_t type) {
    switch (type) {
    case DM_USER_REQ_MAP_READ:
        return 0;
    case DM_USER_REQ_MAP_WRITE:
        return 1;
    case DM_USER_REQ_MAP_FLUSH:
        return 2;
    case DM_USER_REQ_MAP_DISCARD:
        return 3;
    case DM_USER_REQ_MAP_SECURE_ERASE:
        return 4;
    case DM_USER_REQ_MAP_WRITE_ZEROES:
        return 5;
    default:
        return 6;
    }
}
inline constexpr std::string_view stat_bucket_name(std::size_t b) {
    constexpr std::string_view names[stat_buckets] = {
        "read", "write", "flush", "discard", "secure_erase", "write_zeroes", "other"};
    return names[b];
}

struct op_counts {
    std::uint64_t requests = 0;
    std::uint64_t bytes = 0;
    std::uint64_t errors = 0;
};

// A snapshot, summed over threads.
struct server_stats {
    std::array<op_counts, stat_buckets> ops{};
    std::uint64_t in_flight = 0;
    std::uint64_t in_flight_high_water = 0; // the largest per-thread high water
    std::uint64_t malformed = 0;            // requests rejected before reaching the store

    std::uint64_t total_requests() const {
        std::uint64_t n = 0;
        for (auto& o : ops)
            n += o.requests;
        return n;
    }
    std::uint64_t total_errors() const {
        std::uint64_t n = 0;
        for (auto& o : ops)
            n += o.errors;
        return n;
    }
    std::string to_string() const {
        std::string s;
        for (std::size_t b = 0; b < stat_buckets; ++b)
            if (ops[b].requests)
                s += fmt::format("{} {} req {} B {} err; ", stat_bucket_name(b), ops[b].requests,
                                 ops[b].bytes, ops[b].errors);
        s += fmt::format("in flight {} (high {}), malformed {}", in_flight, in_flight_high_water,
                         malformed);
        return s;
    }
};

// One thread's counters: written by that thread only, read by anyone.
class thread_stats {
public:
    void request_started() {
        auto n = in_flight_.load(std::memory_order_relaxed) + 1;
        in_flight_.store(n, std::memory_order_relaxed);
        if (n > high_water_.load(std::memory_order_relaxed))
            high_water_.store(n, std::memory_order_relaxed);
    }
    void request_finished(std::uint64_t type, std::uint64_t bytes, bool failed) {
        in_flight_.store(in_flight_.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
        auto& c = counters_[stat_bucket(type)];
        bump(c.requests, 1);
        bump(c.bytes, bytes);
        if (failed)
            bump(c.errors, 1);
    }
    void malformed() { bump(malformed_, 1); }

    void add_to(server_stats& s) const {
        for (std::size_t b = 0; b < stat_buckets; ++b) {
            s.ops[b].requests += counters_[b].requests.load(std::memory_order_relaxed);
            s.ops[b].bytes += counters_[b].bytes.load(std::memory_order_relaxed);
            s.ops[b].errors += counters_[b].errors.load(std::memory_order_relaxed);
        }
        s.in_flight += in_flight_.load(std::memory_order_relaxed);
        auto hw = high_water_.load(std::memory_order_relaxed);
        if (hw > s.in_flight_high_water)
            s.in_flight_high_water = hw;
        s.malformed += malformed_.load(std::memory_order_relaxed);
    }

private:
    static void bump(std::atomic<std::uint64_t>& a, std::uint64_t by) {
        a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
    }
    struct atomic_counts {
        std::atomic<std::uint64_t> requests{0}, bytes{0}, errors{0};
    };
    std::array<atomic_counts, stat_buckets> counters_{};
    std::atomic<std::uint64_t> in_flight_{0}, high_water_{0}, malformed_{0};
};

} // namespace dmuser
