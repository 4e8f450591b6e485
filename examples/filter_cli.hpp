// filter_cli.hpp: `--filter NAME[:KEY=VALUE,...]` on every example daemon: a stack of the
// SDK's filters (include/dmuser/filters/) over the daemon's store, built at run time. The
// first --filter given is the outermost, as with nbdkit: a request meets it first.
//
//   --filter delay:read=5ms --filter error:rate=0.01,op=read
#pragma once

#include "cli.hpp"
#include "dmuser/filters/any_store.hpp"
#include "dmuser/filters/cache.hpp"
#include "dmuser/filters/delay.hpp"
#include "dmuser/filters/error.hpp"
#include "dmuser/filters/offset.hpp"
#include "dmuser/filters/partition_table.hpp"
#include "dmuser/filters/read_only.hpp"
#include "dmuser/filters/retry.hpp"
#include "dmuser/filters/stats.hpp"

#include <cerrno>
#include <charconv>
#include <chrono>
#include <fmt/format.h>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dmuser::examples {

namespace detail {

struct filter_spec {
    std::string name;
    std::vector<std::pair<std::string, std::string>> args;
};

[[noreturn]] inline void bad_filter(std::string_view spec, std::string_view why) {
    throw std::invalid_argument(fmt::format("--filter '{}': {}", spec, why));
}

inline filter_spec parse_filter(std::string_view spec) {
    filter_spec f;
    const auto colon = spec.find(':');
    f.name = std::string(spec.substr(0, colon));
    if (colon == std::string_view::npos)
        return f;
    std::string_view rest = spec.substr(colon + 1);
    while (!rest.empty()) {
        const auto comma = rest.find(',');
        std::string_view item = rest.substr(0, comma);
        const auto eq = item.find('=');
        if (eq == std::string_view::npos || eq == 0)
            bad_filter(spec, fmt::format("'{}' is not KEY=VALUE", item));
        f.args.emplace_back(std::string(item.substr(0, eq)), std::string(item.substr(eq + 1)));
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    }
    return f;
}

inline std::chrono::microseconds parse_time(std::string_view spec, std::string_view v) {
    std::uint64_t n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    const std::string_view unit(end, v.data() + v.size() - end);
    if (ec != std::errc{} || end == v.data())
        bad_filter(spec, fmt::format("'{}' is not a time (250us, 5ms, 1s)", v));
    if (unit == "us")
        return std::chrono::microseconds(n);
    if (unit == "ms")
        return std::chrono::milliseconds(n);
    if (unit == "s")
        return std::chrono::seconds(n);
    bad_filter(spec, fmt::format("'{}': the unit must be us, ms or s", v));
}

inline filters::op_set parse_ops(std::string_view spec, std::string_view v) {
    filters::op_set ops = filters::op_set::none();
    while (!v.empty()) {
        const auto plus = v.find('+');
        const std::string_view name = v.substr(0, plus);
        if (name == "all")
            ops = filters::op_set{};
        else if (auto k = filters::op_from_name(name))
            ops.add(*k);
        else
            bad_filter(spec, fmt::format("unknown operation '{}'", name));
        v = plus == std::string_view::npos ? std::string_view{} : v.substr(plus + 1);
    }
    return ops;
}

inline std::uint64_t parse_number(std::string_view spec, std::string_view key, std::string_view v) {
    std::uint64_t n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc{} || end != v.data() + v.size())
        bad_filter(spec, fmt::format("{}='{}' is not a number", key, v));
    return n;
}

inline std::uint64_t parse_bytes(std::string_view spec, std::string_view key, std::string_view v) {
    auto n = parse_size(v);
    if (!n)
        bad_filter(spec, fmt::format("{}='{}' is not a size", key, v));
    return *n;
}

// One filter over `inner`.
inline filters::any_store apply_filter(std::string_view spec, filters::any_store inner) {
    using namespace dmuser::filters;
    const filter_spec f = parse_filter(spec);
    auto unknown = [&](const std::string& key) {
        bad_filter(spec, fmt::format("'{}' has no option '{}'", f.name, key));
    };
    if (f.name == "read-only") {
        if (!f.args.empty())
            unknown(f.args[0].first);
        return any_store(read_only<any_store>(std::move(inner)));
    }
    if (f.name == "offset") {
        window w;
        std::optional<unsigned> part;
        for (auto& [k, v] : f.args) {
            if (k == "offset")
                w.offset = parse_bytes(spec, k, v);
            else if (k == "length")
                w.length = parse_bytes(spec, k, v);
            else if (k == "partition")
                part = static_cast<unsigned>(parse_number(spec, k, v));
            else
                unknown(k);
        }
        if (part)
            w = partition(inner, *part);
        return any_store(offset<any_store>(std::move(inner), w));
    }
    if (f.name == "delay") {
        delay_options o;
        for (auto& [k, v] : f.args) {
            if (k == "seed") {
                o.seed = parse_number(spec, k, v);
                continue;
            }
            const auto dash = v.find('-');
            const auto low = parse_time(spec, std::string_view(v).substr(0, dash));
            const auto high = dash == std::string::npos
                                  ? std::chrono::microseconds(0)
                                  : parse_time(spec, std::string_view(v).substr(dash + 1));
            const op_set ops = parse_ops(spec, k);
            for (std::size_t i = 0; i < op_kinds; ++i)
                if (ops.has(static_cast<op_kind>(i)))
                    o.on(static_cast<op_kind>(i), low, high);
        }
        return any_store(delay<any_store>(std::move(inner), o));
    }
    if (f.name == "error") {
        error_options o;
        for (auto& [k, v] : f.args) {
            if (k == "op")
                o.ops = parse_ops(spec, v);
            else if (k == "rate") {
                char* end = nullptr;
                o.rate = std::strtod(v.c_str(), &end);
                if (end == v.c_str() || *end || !(o.rate >= 0 && o.rate <= 1))
                    bad_filter(spec, fmt::format("rate='{}' is not a chance from 0 to 1", v));
            } else if (k == "from")
                o.from = parse_bytes(spec, k, v);
            else if (k == "to")
                o.to = parse_bytes(spec, k, v);
            else if (k == "trigger")
                o.trigger = v;
            else if (k == "errno")
                o.error = static_cast<int>(parse_number(spec, k, v));
            else if (k == "seed")
                o.seed = parse_number(spec, k, v);
            else
                unknown(k);
        }
        return any_store(error<any_store>(std::move(inner), std::move(o)));
    }
    if (f.name == "retry") {
        retry_options o;
        for (auto& [k, v] : f.args) {
            if (k == "attempts")
                o.attempts = static_cast<unsigned>(parse_number(spec, k, v));
            else if (k == "backoff")
                o.backoff = parse_time(spec, v);
            else if (k == "op")
                o.ops = parse_ops(spec, v);
            else
                unknown(k);
        }
        return any_store(retry<any_store>(std::move(inner), o));
    }
    if (f.name == "cache") {
        cache_options o;
        for (auto& [k, v] : f.args) {
            if (k == "size")
                o.capacity = parse_bytes(spec, k, v);
            else if (k == "block")
                o.block = parse_bytes(spec, k, v);
            else if (k == "mode" && (v == "write-back" || v == "write-through"))
                o.write_back = v == "write-back";
            else if (k == "mode")
                bad_filter(spec, "mode is write-through or write-back");
            else
                unknown(k);
        }
        return any_store(cache<any_store>(std::move(inner), o));
    }
    if (f.name == "stats") {
        stats_options o;
        for (auto& [k, v] : f.args) {
            if (k == "file")
                o.file = v;
            else
                unknown(k);
        }
        return any_store(stats<any_store>(std::move(inner), std::move(o)));
    }
    bad_filter(spec, fmt::format("no filter is named '{}' (see --help)", f.name));
}

} // namespace detail

// The stack `specs` describes over `base` (which must outlive it). Throws
// std::invalid_argument with a one-line reason.
template <BlockStore S>
filters::any_store filter_stack(S& base, const std::vector<std::string>& specs) {
    filters::any_store top = filters::any_store::referring_to(base);
    for (auto it = specs.rbegin(); it != specs.rend(); ++it)
        top = detail::apply_filter(*it, std::move(top));
    return top;
}

} // namespace dmuser::examples
