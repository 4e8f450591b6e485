// dmuser/filters/retry.hpp: an inner operation that fails is tried again, up to `attempts`
// times in all, waiting `backoff` (doubled each time, on the request's ring) in between. For
// a backend with transient failures: a network store, a flaky disk. UNSUPPORTED is final,
// and so is an exception.
//
//   dmuser::filters::retry patient{remote{...}, {.attempts = 5, .backoff = 10ms}};
#pragma once

#include "dmuser/filters/intercepting.hpp"
#include "dmuser/ring.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>

namespace dmuser::filters {

struct retry_options {
    unsigned attempts = 3; // tries in all, at least 1
    std::chrono::microseconds backoff{1000};
    op_set ops{};
};

template <BlockStore Inner>
struct retry : intercepting<retry<Inner>, Inner> {
    using typename forwarding<Inner>::context;

    retry(Inner inner, retry_options o)
        : intercepting<retry<Inner>, Inner>(std::move(inner)), o_(o) {
        if (o_.attempts == 0)
            o_.attempts = 1;
    }

    // Operations that failed and were tried again, and that succeeded on a later try.
    std::uint64_t retried() const noexcept { return retried_.get(); }
    std::uint64_t recovered() const noexcept { return recovered_.get(); }

    template <typename Call>
    task<std::error_code> intercept(op_kind op, context& c, std::uint64_t, std::uint64_t,
                                    Call call) {
        const unsigned tries = o_.ops.has(op) ? o_.attempts : 1;
        auto wait = o_.backoff;
        std::error_code ec;
        for (unsigned attempt = 1;; ++attempt) {
            ec = co_await await_result(call);
            if (!ec && attempt > 1)
                recovered_.add();
            if (!ec || ec == std::errc::operation_not_supported || attempt >= tries ||
                c.stop_requested())
                break;
            if (attempt == 1)
                retried_.add();
            if (wait.count() > 0)
                co_await this_ring().timeout(wait);
            wait *= 2;
        }
        co_return ec;
    }

private:
    retry_options o_;
    op_counter retried_;
    op_counter recovered_;
};
template <typename Inner>
retry(Inner, retry_options) -> retry<Inner>;

} // namespace dmuser::filters
