// dmuser/device_table.hpp: the `user` target's table line, built from named options, and its
// status line, parsed into counters. Pure text; the ioctls that carry them are in device.hpp.
//
// Table:  <start> <length> user <start> <length> <control-name> [<#opt> <opt>...]
// The first start/length pair is device-mapper's own; the second is the target's arguments.
#pragma once

#include <charconv>
#include <cstdint>
#include <fmt/format.h>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dmuser {

inline constexpr std::string_view user_target_type = "user";

// Everything needed to create one dm-user device.
struct UserTable {
    std::string name;    // the dm device: /dev/mapper/<name>
    std::string control; // the daemon's channel: /dev/dm-user/<control>; empty means <name>
    std::uint64_t sectors = 0;
    bool read_only = false;
    // Part 2 table options: turn off what the daemon cannot honour.
    bool no_flush = false;
    bool no_discard = false;
    bool no_write_zeroes = false;
    bool no_secure_erase = false;
    std::uint64_t max_payload = 0; // bytes; 0 leaves the module's default

    const std::string& control_name() const { return control.empty() ? name : control; }

    // The optional arguments, without their count.
    std::vector<std::string> options() const {
        std::vector<std::string> opts;
        if (no_flush)
            opts.emplace_back("no_flush");
        if (no_discard)
            opts.emplace_back("no_discard");
        if (no_write_zeroes)
            opts.emplace_back("no_write_zeroes");
        if (no_secure_erase)
            opts.emplace_back("no_secure_erase");
        if (max_payload != 0)
            opts.push_back(fmt::format("max_payload:{}", max_payload));
        return opts;
    }

    // The target's arguments: what follows "user" in the table line.
    std::string params() const {
        std::string out = fmt::format("0 {} {}", sectors, control_name());
        const auto opts = options();
        if (!opts.empty()) {
            out += fmt::format(" {}", opts.size());
            for (const auto& o : opts)
                out += " " + o;
        }
        return out;
    }

    // The whole line, as `dmsetup create NAME --table` takes it.
    std::string line() const { return fmt::format("0 {} user {}", sectors, params()); }
};

// Why a UserTable cannot be loaded, or nullopt when it can. Checked before any ioctl, so a bad
// name fails with a sentence rather than EINVAL.
inline std::optional<std::string> user_table_problem(const UserTable& t) {
    auto bad_name = [](std::string_view n, std::size_t max) -> std::optional<std::string> {
        if (n.empty())
            return "is empty";
        if (n.size() >= max)
            return fmt::format("is longer than {} characters", max - 1);
        if (n == "." || n == "..")
            return "is not a valid file name";
        for (char c : n)
            if (c == '/' || c == ' ' || c == '\t' || c == '\n' ||
                static_cast<unsigned char>(c) < 32)
                return "contains '/', white space or a control character";
        return std::nullopt;
    };
    if (auto why = bad_name(t.name, 128))
        return fmt::format("device name '{}' {}", t.name, *why);
    if (auto why = bad_name(t.control_name(), 64))
        return fmt::format("control name '{}' {}", t.control_name(), *why);
    if (t.sectors == 0)
        return "device size must be at least one 512-byte sector";
    return std::nullopt;
}

// The status line, as `dmsetup status` prints after "user": whitespace-separated tokens, counters
// as key=value. Tokens that are not key=value (a version, a feature word) are kept in order.
struct UserTargetStatus {
    std::map<std::string, std::uint64_t, std::less<>> counters;
    std::map<std::string, std::string, std::less<>> values; // key=value whose value is not a number
    std::vector<std::string> words;

    std::optional<std::uint64_t> counter(std::string_view key) const {
        auto it = counters.find(key);
        if (it == counters.end())
            return std::nullopt;
        return it->second;
    }

    static UserTargetStatus parse(std::string_view line) {
        UserTargetStatus s;
        std::size_t i = 0;
        while (i < line.size()) {
            while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\n'))
                ++i;
            std::size_t j = i;
            while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\n')
                ++j;
            if (j > i)
                s.add_token(line.substr(i, j - i));
            i = j;
        }
        return s;
    }

private:
    void add_token(std::string_view tok) {
        const auto eq = tok.find('=');
        if (eq == std::string_view::npos || eq == 0) {
            words.emplace_back(tok);
            return;
        }
        const auto key = tok.substr(0, eq);
        const auto value = tok.substr(eq + 1);
        std::uint64_t n = 0;
        const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
        if (ec == std::errc{} && end == value.data() + value.size() && !value.empty())
            counters.insert_or_assign(std::string(key), n);
        else
            values.insert_or_assign(std::string(key), std::string(value));
    }
};

} // namespace dmuser
