// dmuser: see what dm-user devices this machine has, read their counters, stop one safely.
// What `ublk list` / `ublk del` are to ublk, for an admin; scripts take --json.
#include "user_devices.hpp"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace dmuser::tools;

namespace {

constexpr const char* usage = R"(Usage: dmuser COMMAND [OPTIONS]

List, inspect and remove dm-user devices (device-mapper `user' targets served by a
daemon through /dev/dm-user/CONTROL). Reads device-mapper directly, as dmsetup does.

Commands:
  list                 every dm-user device: name, control node, size, channels,
                       daemon pids and request counters
  status NAME          the counters of device NAME, parsed from its status line
  remove NAME          stop NAME safely: remove the device (refused while it is
                       mounted or open), then wait for its daemon to exit

Options:
  --json               machine-readable output (list, status, remove)
  --watch [SECS]       status: print again every SECS seconds (default 1) until
                       interrupted
  --wait SECS          remove: how long to wait for the daemon (default 10)
  -h, --help           this text
  --version            the version

The daemon pids are the processes holding /dev/dm-user/CONTROL open (the module
does not record which process serves a target). Needs root, as dmsetup does.
)";

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\')
            out += fmt::format("\\{}", c);
        else if (static_cast<unsigned char>(c) < 0x20)
            out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        else
            out += c;
    }
    return out + "\"";
}

std::string json_counters(const dmuser::user_target_status& s) {
    std::string out = "{";
    for (const auto& [key, value] : s.counters)
        out += fmt::format("{}{}: {}", out.size() > 1 ? ", " : "", json_string(key), value);
    return out + "}";
}

std::string json_device(const user_device& d) {
    std::string pids;
    for (int p : d.daemon_pids)
        pids += fmt::format("{}{}", pids.empty() ? "" : ", ", p);
    return fmt::format("{{\"name\": {}, \"control\": {}, \"size_bytes\": {}, \"channels\": {}, "
                       "\"daemon_pids\": [{}], \"table\": {}, \"counters\": {}}}",
                       json_string(d.name), json_string("/dev/dm-user/" + d.control),
                       d.sectors * 512, d.status.counter("channels").value_or(0), pids,
                       json_string(d.table), json_counters(d.status));
}

std::string pid_list(const std::vector<int>& pids) {
    if (pids.empty())
        return "-";
    std::string out;
    for (int p : pids)
        out += fmt::format("{}{}", out.empty() ? "" : ",", p);
    return out;
}

int cmd_list(bool json) {
    const dmuser::dm::control ctl;
    const auto devices = list_user_devices(ctl);
    if (json) {
        std::string out = "[";
        for (const auto& d : devices)
            out += (out.size() > 1 ? ",\n " : "") + json_device(d);
        fmt::print("{}]\n", out);
        return 0;
    }
    fmt::print("{:<16} {:<24} {:>12} {:>8} {:<12} {:>10} {:>8} {:>7}\n", "NAME", "CONTROL", "SIZE",
               "CHANNELS", "DAEMON-PID", "COMPLETED", "ERRORS", "QUEUED");
    for (const auto& d : devices)
        fmt::print("{:<16} {:<24} {:>12} {:>8} {:<12} {:>10} {:>8} {:>7}\n", d.name,
                   "/dev/dm-user/" + d.control, d.sectors * 512,
                   d.status.counter("channels").value_or(0), pid_list(d.daemon_pids),
                   d.status.counter("completed").value_or(0),
                   d.status.counter("errors").value_or(0), d.status.counter("queued").value_or(0));
    return 0;
}

user_device need_device(const dmuser::dm::control& ctl, const std::string& name) {
    auto d = read_user_device(ctl, name);
    if (!d)
        throw std::runtime_error(fmt::format("there is no dm-user device '{}'", name));
    return *d;
}

volatile std::sig_atomic_t interrupted = 0;

int cmd_status(const std::string& name, bool json, unsigned watch_secs) {
    const dmuser::dm::control ctl;
    std::signal(SIGINT, [](int) { interrupted = 1; });
    std::signal(SIGTERM, [](int) { interrupted = 1; });
    for (;;) {
        const auto d = need_device(ctl, name);
        if (json) {
            fmt::print("{}\n", json_device(d));
        } else {
            fmt::print("{}: {} on /dev/dm-user/{}, daemon pid {}\n", d.name, d.sectors * 512,
                       d.control, pid_list(d.daemon_pids));
            for (const auto& [key, value] : d.status.counters)
                fmt::print("  {:<16} {}\n", key, value);
        }
        std::fflush(stdout);
        if (watch_secs == 0)
            return 0;
        // A plain sleep: the next sample is due then, whatever happens meanwhile.
        for (unsigned i = 0; i < watch_secs * 10 && !interrupted; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (interrupted)
            return 0;
    }
}

int cmd_remove(const std::string& name, bool json, unsigned wait_secs) {
    const dmuser::dm::control ctl;
    const auto d = need_device(ctl, name);
    dmuser::dm::ioctl_buffer buf(name);
    if (int err = ctl.run(DM_DEV_REMOVE, buf)) {
        if (err == EBUSY)
            throw std::runtime_error(fmt::format(
                "'{}' is in use (mounted or open): not removed; unmount or close it first", name));
        dmuser::dm::fail(err, fmt::format("cannot remove '{}'", name));
    }
    // No udev may be running to take the node away (dmsetup's --verifyudev case).
    const std::string node = "/dev/mapper/" + name;
    struct stat st {};
    if (::lstat(node.c_str(), &st) == 0 && S_ISBLK(st.st_mode))
        ::unlink(node.c_str());
    // The daemon reads ENOTBLK once the target is gone and exits by itself.
    std::vector<int> left = d.daemon_pids;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_secs);
    while (!left.empty() && std::chrono::steady_clock::now() < deadline) {
        std::erase_if(left, [](int pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; });
        if (!left.empty())
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (json)
        fmt::print("{{\"name\": {}, \"removed\": true, \"daemon_pids\": [{}], "
                   "\"daemon_pids_running\": [{}]}}\n",
                   json_string(name), pid_list(d.daemon_pids) == "-" ? "" : pid_list(d.daemon_pids),
                   pid_list(left) == "-" ? "" : pid_list(left));
    else
        fmt::print("{}: removed{}\n", name,
                   d.daemon_pids.empty() ? "; no daemon was serving it"
                   : left.empty() ? fmt::format("; daemon {} exited", pid_list(d.daemon_pids))
                                  : fmt::format("; daemon {} still running after {} s",
                                                pid_list(left), wait_secs));
    return left.empty() ? 0 : 1;
}

std::optional<unsigned> seconds(std::string_view s) {
    unsigned n = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc{} || end != s.data() + s.size() || n > 86400)
        return std::nullopt;
    return n;
}

int run(int argc, char** argv) {
    std::vector<std::string> words;
    bool json = false;
    unsigned watch = 0, wait = 10;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "-h" || a == "--help") {
            fmt::print("{}", usage);
            return 0;
        } else if (a == "--version") {
            fmt::print("dmuser {}\n", DMUSER_VERSION);
            return 0;
        } else if (a == "--json") {
            json = true;
        } else if (a == "--watch") {
            watch = 1;
            if (i + 1 < argc && seconds(argv[i + 1]))
                watch = std::max(1u, *seconds(argv[++i]));
        } else if (a == "--wait") {
            auto n = i + 1 < argc ? seconds(argv[i + 1]) : std::nullopt;
            if (!n)
                throw std::invalid_argument("--wait needs a number of seconds");
            wait = *n;
            ++i;
        } else if (a.starts_with("-")) {
            throw std::invalid_argument(fmt::format("unknown option '{}' (see --help)", a));
        } else {
            words.emplace_back(a);
        }
    }
    if (words.empty()) {
        fmt::print(stderr, "{}", usage);
        return 2;
    }
    if (words[0] == "list" && words.size() == 1)
        return cmd_list(json);
    if (words[0] == "status" && words.size() == 2)
        return cmd_status(words[1], json, watch);
    if (words[0] == "remove" && words.size() == 2)
        return cmd_remove(words[1], json, wait);
    throw std::invalid_argument(
        fmt::format("unknown command or wrong arguments: '{}' (see --help)", words[0]));
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        fmt::print(stderr, "dmuser: {}\n", e.what());
        return 1;
    }
}
