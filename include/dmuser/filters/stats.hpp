// dmuser/filters/stats.hpp: per-operation counts, bytes, errors and latency (p50, p99, max)
// as the inner store sees them: the store's own time, without the kernel and the channel.
// The table goes to the log, or to a file, when the filter is destroyed (the daemon stops),
// and whenever report() is called.
//
//   dmuser::filters::stats measured{disk{...}, {.file = "/run/disk.stats"}};
#pragma once

#include "dmuser/filters/intercepting.hpp"
#include "dmuser/latency_histogram.hpp"
#include "dmuser/log.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fmt/format.h>
#include <memory>
#include <string>

namespace dmuser::filters {

struct stats_options {
    std::string file{}; // empty: the log
};

struct op_stats {
    latency_histogram latency;
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::uint64_t> errors{0};
};

template <BlockStore Inner>
struct stats : intercepting<stats<Inner>, Inner> {
    using typename forwarding<Inner>::context;

    stats(Inner inner, stats_options o)
        : intercepting<stats<Inner>, Inner>(std::move(inner)), o_(std::move(o)),
          ops_(std::make_unique<std::array<op_stats, op_kinds>>()) {}
    stats(stats&&) = default;
    ~stats() {
        if (ops_)
            report();
    }

    const op_stats& of(op_kind k) const { return (*ops_)[static_cast<std::size_t>(k)]; }

    // The table: one line per operation that was seen.
    std::string table() const {
        std::string out =
            "op            requests        bytes   errors      p50      p99      max\n";
        auto us = [](std::chrono::nanoseconds d) {
            return fmt::format("{:.1f}us", double(d.count()) / 1000.0);
        };
        for (std::size_t i = 0; i < op_kinds; ++i) {
            const op_stats& s = (*ops_)[i];
            if (s.latency.count() == 0)
                continue;
            out += fmt::format("{:<12} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8}\n", op_names[i],
                               s.latency.count(), s.bytes.load(), s.errors.load(),
                               us(s.latency.percentile(0.5)), us(s.latency.percentile(0.99)),
                               us(s.latency.max()));
        }
        return out;
    }
    void report() const {
        const std::string t = table();
        if (o_.file.empty()) {
            log::info("store statistics:\n{}", t);
            return;
        }
        if (std::FILE* f = std::fopen(o_.file.c_str(), "w")) {
            std::fwrite(t.data(), 1, t.size(), f);
            std::fclose(f);
        } else {
            log::warn("stats filter: cannot write {}", o_.file);
        }
    }

    template <typename Call>
    task<std::error_code> intercept(op_kind op, context&, std::uint64_t, std::uint64_t len,
                                    Call call) {
        const auto start = std::chrono::steady_clock::now();
        std::error_code ec = co_await await_result(std::move(call));
        op_stats& s = (*ops_)[static_cast<std::size_t>(op)];
        s.latency.record(std::chrono::steady_clock::now() - start);
        s.bytes.fetch_add(len, std::memory_order_relaxed);
        if (ec)
            s.errors.fetch_add(1, std::memory_order_relaxed);
        co_return ec;
    }

private:
    stats_options o_;
    std::unique_ptr<std::array<op_stats, op_kinds>> ops_; // atomics do not move
};
template <typename Inner>
stats(Inner, stats_options) -> stats<Inner>;

} // namespace dmuser::filters
