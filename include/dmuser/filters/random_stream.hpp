// dmuser/filters/random_stream.hpp: reproducible random draws for the filters that act by
// chance (delay, error), shared by every server thread without a lock.
#pragma once

#include <atomic>
#include <cstdint>

namespace dmuser::filters {

// splitmix64 of a shared counter: a reproducible stream of draws, lock-free across threads.
class random_stream {
public:
    explicit random_stream(std::uint64_t seed) : state_(seed) {}
    random_stream(random_stream&& o) noexcept : state_(o.state_.load()) {}
    std::uint64_t next() noexcept {
        std::uint64_t z = state_.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed) +
                          0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, 1).
    double unit() noexcept { return double(next() >> 11) * 0x1.0p-53; }

private:
    std::atomic<std::uint64_t> state_;
};

} // namespace dmuser::filters
