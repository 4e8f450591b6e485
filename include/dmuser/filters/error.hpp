// dmuser/filters/error.hpp: injected failures. An operation of the chosen kinds fails (EIO,
// answered ERROR; or the chosen errno) when it touches the chosen byte range, with the
// chosen probability, and only while a trigger file exists if one is named. For testing
// what a file system, database or RAID layer does when the disk goes bad.
//
//   dmuser::filters::error flaky{disk{...}, {.rate = 0.01, .ops = writes}};
//   dmuser::filters::error on_demand{disk{...}, {.trigger = "/run/fail-now"}};
#pragma once

#include "dmuser/filters/intercepting.hpp"
#include "dmuser/filters/random_stream.hpp"

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <string>
#include <unistd.h>

namespace dmuser::filters {

struct error_options {
    double rate = 1.0;      // the chance that a matching operation fails
    op_set ops{};           // which operations may fail
    std::uint64_t from = 0; // the byte range they must touch: [from, to)
    std::uint64_t to = ~0ull;
    std::string trigger{}; // if set: only while this file exists
    int error = EIO;       // the errno it fails with
    std::uint64_t seed = 1;
};

template <BlockStore Inner>
struct error : intercepting<error<Inner>, Inner> {
    using typename forwarding<Inner>::context;

    error(Inner inner, error_options o)
        : intercepting<error<Inner>, Inner>(std::move(inner)), o_(std::move(o)), random_(o_.seed) {}

    // Failures injected so far.
    std::uint64_t injected() const noexcept { return injected_.get(); }

    template <typename Call>
    task<std::error_code> intercept(op_kind op, context&, std::uint64_t offset, std::uint64_t len,
                                    Call call) {
        if (should_fail(op, offset, len)) {
            injected_.add();
            co_return std::error_code(o_.error, std::generic_category());
        }
        co_return co_await await_result(std::move(call));
    }

private:
    bool should_fail(op_kind op, std::uint64_t offset, std::uint64_t len) {
        if (!o_.ops.has(op))
            return false;
        // A flush has no range: it matches any.
        if (op != op_kind::flush && (offset >= o_.to || offset + len <= o_.from))
            return false;
        if (!o_.trigger.empty() && ::access(o_.trigger.c_str(), F_OK) != 0)
            return false;
        return o_.rate >= 1.0 || random_.unit() < o_.rate;
    }

    error_options o_;
    random_stream random_;
    op_counter injected_;
};
template <typename Inner>
error(Inner, error_options) -> error<Inner>;

} // namespace dmuser::filters
