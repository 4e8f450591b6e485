// dmuser/filters/delay.hpp: an operation waits before it reaches the inner store: a fixed
// time, or one drawn uniformly from [min, max], chosen per kind of operation. The wait is a timeout
// on the request's ring, so the thread serves other requests meanwhile. For testing how a file
// system or an application copes with a slow disk.
//
//   dmuser::filters::delay slow{ramdisk{...}, filters::delay_options{}.on(op_kind::read, 5ms)};
#pragma once

#include "dmuser/filters/intercepting.hpp"
#include "dmuser/filters/random_stream.hpp"
#include "dmuser/ring.hpp"

#include <array>
#include <chrono>
#include <cstdint>

namespace dmuser::filters {

// Per operation: a fixed wait (min), or one drawn uniformly from [min, max] when max > min.
struct delay_options {
    std::array<std::chrono::microseconds, op_kinds> min{};
    std::array<std::chrono::microseconds, op_kinds> max{};
    std::uint64_t seed = 1;

    delay_options& on(op_kind k, std::chrono::microseconds low,
                      std::chrono::microseconds high = std::chrono::microseconds(0)) {
        min[static_cast<std::size_t>(k)] = low;
        max[static_cast<std::size_t>(k)] = high;
        return *this;
    }
};

template <BlockStore Inner>
struct delay : intercepting<delay<Inner>, Inner> {
    using typename forwarding<Inner>::context;

    delay(Inner inner, delay_options o)
        : intercepting<delay<Inner>, Inner>(std::move(inner)), o_(o), random_(o.seed) {}

    template <typename Call>
    task<std::error_code> intercept(op_kind op, context&, std::uint64_t, std::uint64_t, Call call) {
        const auto i = static_cast<std::size_t>(op);
        auto wait = o_.min[i];
        if (o_.max[i] > o_.min[i])
            wait += std::chrono::microseconds(static_cast<std::int64_t>(
                random_.unit() * double((o_.max[i] - o_.min[i]).count() + 1)));
        if (wait.count() > 0)
            co_await this_ring().timeout(wait);
        co_return co_await await_result(std::move(call));
    }

private:
    delay_options o_;
    random_stream random_;
};
template <typename Inner>
delay(Inner, delay_options) -> delay<Inner>;

} // namespace dmuser::filters
