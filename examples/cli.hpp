// cli.hpp: the command-line values the example programs share: sizes with unit suffixes and
// counts, each parsed strictly so a typo is a one-line error instead of a surprise.
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fmt/format.h>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dmuser::examples {

// A program's main(): run(argc, argv), an exception reported as "PROG: what" and exit 1.
inline int run_main(const char* prog, int (*run)(int, char**), int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}: {}\n", prog, e.what());
        return 1;
    }
}

// "4096", "512K", "256M", "2G", "1T" (binary units, optional trailing "iB" or "B").
inline std::optional<std::uint64_t> parse_size(std::string_view s) {
    std::uint64_t n = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc{} || end == s.data())
        return std::nullopt;
    std::string_view unit(end, static_cast<std::size_t>(s.data() + s.size() - end));
    if (unit.ends_with("iB"))
        unit.remove_suffix(2);
    else if (unit.size() == 2 && unit.back() == 'B')
        unit.remove_suffix(1);
    int shift = 0;
    if (unit.empty() || unit == "B")
        shift = 0;
    else if (unit == "K" || unit == "k")
        shift = 10;
    else if (unit == "M" || unit == "m")
        shift = 20;
    else if (unit == "G" || unit == "g")
        shift = 30;
    else if (unit == "T" || unit == "t")
        shift = 40;
    else
        return std::nullopt;
    if (shift && n > (UINT64_MAX >> shift))
        return std::nullopt;
    return n << shift;
}

// The value of a size option such as --size, or an error naming the option.
inline std::uint64_t size_option(std::string_view option, std::string_view value) {
    if (auto n = parse_size(value))
        return *n;
    throw std::invalid_argument(
        fmt::format("{} '{}': expected a size such as 256M or 1G", option, value));
}

inline std::optional<unsigned> parse_count(std::string_view s, unsigned min, unsigned max) {
    unsigned n = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc{} || end != s.data() + s.size() || n < min || n > max)
        return std::nullopt;
    return n;
}

// 268435456 -> "256 MiB"
inline std::string human_size(std::uint64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double v = static_cast<double>(bytes);
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.4g} {}", v, units[u]);
}

// Walks argv: each option is `--name VALUE`, `--name=VALUE` or a bare `--flag`.
class ArgWalker {
public:
    ArgWalker(int argc, char** argv) : argc_(argc), argv_(argv) {}

    bool done() const { return i_ >= argc_; }
    std::string_view current() const { return argv_[i_]; }
    void skip() { ++i_; }

    // The value when the current argument is option `name` (and then moves past it). An option
    // given without its value throws std::invalid_argument with a one-line reason.
    std::optional<std::string_view> value(std::string_view name) {
        const std::string_view a = argv_[i_];
        if (a == name) {
            if (i_ + 1 >= argc_)
                throw std::invalid_argument(fmt::format("{} needs a value", name));
            i_ += 2;
            return std::string_view(argv_[i_ - 1]);
        }
        if (a.size() > name.size() && a.starts_with(name) && a[name.size()] == '=') {
            ++i_;
            return a.substr(name.size() + 1);
        }
        return std::nullopt;
    }

    bool flag(std::string_view name) {
        if (current() != name)
            return false;
        ++i_;
        return true;
    }

private:
    int argc_;
    char** argv_;
    int i_ = 1;
};

} // namespace dmuser::examples
