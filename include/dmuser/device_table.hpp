// dmuser/device_table.hpp: the `user` target's table line, built from named options, and its
// status line, parsed into counters. Pure text; the ioctls that carry them are in device.hpp.
//
// Table:  <start> <length> user <start> <length> <control-name> [<#opt> <opt>...]
// The first start/length pair is device-mapper's own; the second is the target's arguments.
#pragma once

#include <cctype>
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
struct user_table {
    std::string name;    // the dm device: /dev/mapper/<name>
    std::string control; // the daemon's channel: /dev/dm-user/<control>; empty means <name>
    std::uint64_t sectors = 0;
    bool read_only = false;
    // Part 2 table options: turn off what the daemon cannot honour.
    bool no_flush = false;
    bool no_discard = false;
    bool no_write_zeroes = false;
    bool no_secure_erase = false;
    // Largest READ/WRITE payload, bytes: a multiple of the page size up to 64 MiB; 0 leaves the
    // module's default (1 MiB).
    std::uint64_t max_payload = 0;

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
        if (max_payload != 0) { // a keyword and its value: two arguments
            opts.emplace_back("max_payload");
            opts.push_back(fmt::format("{}", max_payload));
        }
        return opts;
    }

    // The target's arguments: what follows "user" in the table line, for the `user` target
    // of version `target_major`. Android's (1.x) constructor takes exactly the three
    // arguments, so the options (what it cannot turn off anyway) are left out.
    std::string params(std::uint32_t target_major) const {
        if (target_major == 1)
            return fmt::format("0 {} {}", sectors, control_name());
        return params();
    }
    std::string line(std::uint32_t target_major) const {
        return fmt::format("0 {} user {}", sectors, params(target_major));
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

// Why a user_table cannot be loaded, or nullopt when it can. Checked before any ioctl, so a bad
// name fails with a sentence rather than EINVAL. The control name follows the module's rule
// (kernel/dm-user/README.md): 1-64 of [A-Za-z0-9-_.+:@], not "." or "..".
inline std::optional<std::string> user_table_problem(const user_table& t) {
    if (t.name.empty() || t.name.size() >= 128 || t.name == "." || t.name == "..")
        return fmt::format("device name '{}' must be 1 to 127 characters", t.name);
    for (char c : t.name)
        if (c == '/' || static_cast<unsigned char>(c) <= ' ')
            return fmt::format("device name '{}' contains '/', a space or a control character",
                               t.name);
    const auto& ctl = t.control_name();
    if (ctl.empty() || ctl.size() > 64 || ctl == "." || ctl == "..")
        return fmt::format("control name '{}' must be 1 to 64 characters", ctl);
    for (char c : ctl)
        if (!std::isalnum(static_cast<unsigned char>(c)) &&
            std::string_view("-_.+:@").find(c) == std::string_view::npos)
            return fmt::format("control name '{}' may only hold letters, digits and -_.+:@", ctl);
    if (t.sectors == 0)
        return "device size must be at least one 512-byte sector";
    if (t.max_payload != 0 && (t.max_payload % 4096 != 0 || t.max_payload > (64u << 20)))
        return fmt::format("max payload {} must be a multiple of 4096 up to 64 MiB", t.max_payload);
    return std::nullopt;
}

// Why a device whose one `user` target has the table line `params` (what the target reports:
// "<start> <length> <control> ...") cannot be adopted as `t`, or nullopt when it can.
inline std::optional<std::string> user_adoption_problem(const user_table& t,
                                                        std::string_view params) {
    // Android's target has no .status, so its table line is empty: nothing to check, and
    // the name is taken on trust (a wrong one fails when the daemon opens the control).
    if (params.empty())
        return std::nullopt;
    std::vector<std::string_view> words;
    for (std::size_t i = 0; i < params.size();) {
        const auto j = std::min(params.find(' ', i), params.size());
        if (j > i)
            words.push_back(params.substr(i, j - i));
        i = j + 1;
    }
    if (words.size() < 3 || words[2] != t.control_name())
        return fmt::format("device '{}' is served through another control device than "
                           "/dev/dm-user/{} (table: '{}')",
                           t.name, t.control_name(), params);
    return std::nullopt;
}

// The status line, as `dmsetup status` prints after "user": whitespace-separated tokens, counters
// as key=value (the module's: queued, inflight_read, inflight_write, inflight_other, completed,
// errors, channels). Tokens that are not key=value are kept in order, so a newer module's
// additions parse too.
struct user_target_status {
    std::map<std::string, std::uint64_t, std::less<>> counters;
    std::map<std::string, std::string, std::less<>> values; // key=value whose value is not a number
    std::vector<std::string> words;

    std::optional<std::uint64_t> counter(std::string_view key) const {
        auto it = counters.find(key);
        if (it == counters.end())
            return std::nullopt;
        return it->second;
    }

    static user_target_status parse(std::string_view line) {
        user_target_status s;
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
