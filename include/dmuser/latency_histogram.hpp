// dmuser/latency_histogram.hpp: latencies in power-of-two buckets of nanoseconds, recorded
// lock-free from any thread; percentiles are read as the upper bound of their bucket (within
// a factor of 2), max exactly.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>

namespace dmuser {

class latency_histogram {
public:
    static constexpr std::size_t buckets = 48; // up to 2^47 ns: 39 hours

    void record(std::chrono::nanoseconds d) noexcept {
        const auto ns = static_cast<std::uint64_t>(d.count() > 0 ? d.count() : 0);
        const std::size_t b = std::min<std::size_t>(std::bit_width(ns), buckets - 1);
        counts_[b].fetch_add(1, std::memory_order_relaxed);
        count_.fetch_add(1, std::memory_order_relaxed);
        std::uint64_t seen = max_.load(std::memory_order_relaxed);
        while (ns > seen && !max_.compare_exchange_weak(seen, ns, std::memory_order_relaxed)) {
        }
    }
    std::uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }
    std::chrono::nanoseconds max() const noexcept {
        return std::chrono::nanoseconds(max_.load(std::memory_order_relaxed));
    }
    // The latency below which `fraction` (0..1] of the recorded ones fall, rounded up to its
    // bucket's bound (never above max()); 0 if none was recorded.
    std::chrono::nanoseconds percentile(double fraction) const noexcept {
        const std::uint64_t total = count();
        if (total == 0)
            return std::chrono::nanoseconds(0);
        auto want = static_cast<std::uint64_t>(fraction * double(total) + 0.999999);
        if (want == 0)
            want = 1;
        std::uint64_t seen = 0;
        for (std::size_t b = 0; b < buckets; ++b) {
            seen += counts_[b].load(std::memory_order_relaxed);
            if (seen >= want) {
                const std::uint64_t bound = b == 0 ? 0 : (std::uint64_t{1} << b) - 1;
                return std::min(std::chrono::nanoseconds(bound), max());
            }
        }
        return max();
    }

private:
    std::array<std::atomic<std::uint64_t>, buckets> counts_{};
    std::atomic<std::uint64_t> count_{0};
    std::atomic<std::uint64_t> max_{0};
};

} // namespace dmuser
