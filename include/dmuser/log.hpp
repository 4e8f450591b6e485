// dmuser/log.hpp: the SDK's logging, through fmt, to stderr or a sink the program installs.
#pragma once

#include <atomic>
#include <cstdio>
#include <fmt/format.h>
#include <string>
#include <string_view>

namespace dmuser::log {

enum class level { debug, info, warning, error, off };

// A sink receives one formatted line (no trailing newline). It may be called from any
// server thread at once, so it must be thread-safe.
using sink_fn = void (*)(level, std::string_view);

inline void stderr_sink(level lv, std::string_view line) {
    static constexpr const char* prefix[] = {"debug", "info", "warning", "error", ""};
    // One fwrite per line keeps lines from different threads whole.
    std::string out = fmt::format("dmuser {}: {}\n", prefix[static_cast<int>(lv)], line);
    std::fwrite(out.data(), 1, out.size(), stderr);
}

namespace detail {
inline std::atomic<level> threshold{level::info};
inline std::atomic<sink_fn> sink{&stderr_sink};
} // namespace detail

inline void set_level(level lv) {
    detail::threshold.store(lv, std::memory_order_relaxed);
}
inline level get_level() {
    return detail::threshold.load(std::memory_order_relaxed);
}
// Returns the previous sink so a test can restore it.
inline sink_fn set_sink(sink_fn fn) {
    return detail::sink.exchange(fn ? fn : &stderr_sink);
}
inline bool enabled(level lv) {
    return lv >= get_level() && lv != level::off;
}

template <typename... Args>
void write(level lv, fmt::format_string<Args...> f, Args&&... args) {
    if (!enabled(lv))
        return;
    std::string line = fmt::format(f, std::forward<Args>(args)...);
    detail::sink.load(std::memory_order_relaxed)(lv, line);
}

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
    write(level::debug, f, std::forward<Args>(args)...);
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
    write(level::info, f, std::forward<Args>(args)...);
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
    write(level::warning, f, std::forward<Args>(args)...);
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
    write(level::error, f, std::forward<Args>(args)...);
}

} // namespace dmuser::log
