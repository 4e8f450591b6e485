// daemon.hpp: what every example daemon does around its store: the common options, the
// device's life (create or adopt, remove on SIGINT/SIGTERM), the server on its own thread, a
// one-line reason for every failure, and the closing stats.
//
// Signals are taken by the main thread, not by the server: on SIGINT/SIGTERM the device is
// removed first, while the server still answers requests, and the server then stops by itself
// when the module tells it the target is gone (ENOTBLK). A device that is still open (mounted)
// cannot be removed; the daemon then says so and keeps serving until the next signal. The
// signals come through a signal_relay, so no thread needs to block them; the main thread
// sleeps in poll() until a signal comes or the server ends.
#pragma once

#include "cli.hpp"
#include "dmuser/block_store.hpp"
#include "dmuser/device.hpp"
#include "dmuser/server.hpp"
#include "dmuser/signal_relay.hpp"
#include "dmuser/unique_fd.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <optional>
#include <poll.h>
#include <string>
#include <sys/eventfd.h>
#include <system_error>
#include <thread>
#include <unistd.h>

namespace dmuser::examples {

struct DaemonOptions {
    std::string name;      // /dev/mapper/NAME
    std::string control;   // /dev/dm-user/CONTROL; empty: NAME
    unsigned channels = 0; // 0: one per thread
    unsigned threads = 1;
    unsigned stats_secs = 0;
    unsigned depth = 32;
    unsigned poll_us = 100; // busy polling before a thread sleeps
    std::uint64_t max_payload = 0;
    bool attach = false;    // serve an existing device (left by a daemon that died)
    bool read_only = false; // the device itself is read-only
    bool lock_memory = false; // mlockall: never page the daemon out under memory pressure
    bool io_flusher = true;   // PR_SET_IO_FLUSHER: its allocations do not wait for writeback
};

inline constexpr const char* common_help = R"(Device options (every daemon):
  --name NAME        the device: /dev/mapper/NAME (required)
  --control NAME     its channel: /dev/dm-user/NAME (default: the device name)
  --threads T        server threads, each with its own io_uring (default 1)
  --channels C       channels opened on the control device, spread over the threads
                     (default: one per thread)
  --depth N          requests in flight per channel (default 32)
                     (a store that takes WRITEs into its own memory, as the ramdisk
                     does, reads each in-flight request on a channel of its own:
                     C x N channels)
  --poll-us US       spin up to US microseconds for the next request before sleeping
                     (default 100; 0: sleep at once). At queue depth 1 this saves a
                     context switch and a cross-CPU wake-up per request, for CPU time
  --max-payload SIZE largest request, a multiple of 4K up to 64M (default: the module's, 1M)
  --stats SECS       log the request counters every SECS seconds
  --attach           serve an existing device of that name instead of creating it (after a
                     daemon was killed, say); it is removed at exit all the same
  --mlock            lock the daemon's memory (mlockall), so serving never waits for
                     its own pages to come back under memory pressure
  --no-io-flusher    do not set PR_SET_IO_FLUSHER (set by default: the kernel then does
                     not make the daemon's allocations wait for the writeback it serves)
  -h, --help         this text

SIGINT or SIGTERM removes the device and exits 0. A device still open (mounted) is kept
and served on; the daemon says so and tries again at the next signal.
)";

// Consumes the current argument if it is a common option; throws std::invalid_argument on a
// bad value.
inline bool parse_common_option(ArgWalker& args, DaemonOptions& o) {
    auto count = [](std::string_view opt, std::string_view v, unsigned min, unsigned max) {
        auto n = parse_count(v, min, max);
        if (!n)
            throw std::invalid_argument(
                fmt::format("{} '{}': expected a number from {} to {}", opt, v, min, max));
        return *n;
    };
    if (auto v = args.value("--name"))
        o.name = *v;
    else if (auto v = args.value("--control"))
        o.control = *v;
    else if (auto v = args.value("--threads"))
        o.threads = count("--threads", *v, 1, 64);
    else if (auto v = args.value("--channels"))
        o.channels = count("--channels", *v, 1, 256);
    else if (auto v = args.value("--depth"))
        o.depth = count("--depth", *v, 1, 1024);
    else if (auto v = args.value("--stats"))
        o.stats_secs = count("--stats", *v, 1, 86400);
    else if (auto v = args.value("--poll-us"))
        o.poll_us = count("--poll-us", *v, 0, 1000000);
    else if (auto v = args.value("--max-payload")) {
        auto n = parse_size(*v);
        if (!n || *n == 0 || *n % 4096 || *n > (64u << 20))
            throw std::invalid_argument(
                fmt::format("--max-payload '{}': expected a multiple of 4K up to 64M", *v));
        o.max_payload = *n;
    } else if (args.flag("--attach"))
        o.attach = true;
    else if (args.flag("--mlock"))
        o.lock_memory = true;
    else if (args.flag("--no-io-flusher"))
        o.io_flusher = false;
    else
        return false;
    return true;
}

// The device size for a store: whole sectors only.
inline std::optional<std::string> size_problem(std::uint64_t bytes) {
    if (bytes == 0)
        return "the device size must not be zero";
    if (bytes % 512)
        return fmt::format("the device size {} is not a multiple of 512 bytes", bytes);
    return std::nullopt;
}

// Creates (or adopts) the device for `store`, serves it until a signal removes it or it is
// removed from outside, and returns the exit status. `what` describes the store for the
// startup line ("256 MiB of memory").
template <BlockStore S>
int run_daemon(const char* prog, S& store, const DaemonOptions& o, const std::string& what) {
    auto say = [prog](const std::string& line) { fmt::print(stderr, "{}: {}\n", prog, line); };
    if (o.name.empty()) {
        say("--name is required (see --help)");
        return 2;
    }
    if (auto why = size_problem(store.size())) {
        say(*why);
        return 1;
    }
    // From here a signal is counted, not fatal: one that comes while the device is being
    // made is acted on once it is served.
    std::optional<signal_relay> signals;
    unique_fd server_ended(::eventfd(0, EFD_CLOEXEC));
    try {
        signals.emplace();
        if (!server_ended)
            throw std::system_error(errno, std::system_category(), "eventfd");
    } catch (const std::system_error& e) {
        say(e.what());
        return 1;
    }

    UserTable table;
    table.name = o.name;
    table.control = o.control;
    table.sectors = store.size() / 512;
    table.read_only = o.read_only;
    table.max_payload = o.max_payload;
    table.no_flush = !has_flush<S> && !has_write_fua<S>;
    table.no_discard = !has_discard<S>;
    table.no_secure_erase = !has_secure_erase<S>;
    std::optional<Device> dev;
    try {
        dev.emplace(o.attach ? Device::adopt(table) : Device::create(table));
    } catch (const std::system_error& e) {
        say(e.code() == std::errc::file_exists && !o.attach
                ? fmt::format("{} (--attach serves an existing device)", e.what())
                : e.what());
        return 1;
    }

    device_channels source(table.control_name());
    server_options so;
    so.name = table.control_name();
    so.threads = o.threads;
    so.channels = o.channels;
    so.depth = o.depth;
    so.busy_poll = std::chrono::microseconds(o.poll_us);
    so.handle_signals = false;
    so.lock_memory = o.lock_memory;
    so.io_flusher = o.io_flusher;
    so.stats_interval = std::chrono::seconds(o.stats_secs);
    server<S> srv(store, source, so);
    std::atomic<bool> done{false};
    int status = 1;
    std::thread runner([&] {
        try {
            status = srv.run();
        } catch (const std::exception& e) {
            say(fmt::format("server: {}", e.what()));
            status = 1;
        }
        done = true;
        const std::uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(server_ended.get(), &one, sizeof one);
    });

    const auto started = std::chrono::steady_clock::now();
    while (!srv.ready() && !done &&
           std::chrono::steady_clock::now() - started < std::chrono::seconds(30))
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (srv.ready()) {
        fmt::print("{}: serving {} ({}) from {}, {} channel(s) on {} thread(s)\n", prog,
                   dev->path(), human_size(store.size()), what, srv.channels_open(), o.threads);
        std::fflush(stdout);
    }

    // Once the device is removed the server ends on ENOTBLK; stop() is the backstop if
    // it never reads again.
    constexpr auto backstop = std::chrono::seconds(5);
    bool removed = false, stop_sent = false;
    std::chrono::steady_clock::time_point removed_at;
    while (!done) {
        int timeout_ms = -1;
        if (removed && !stop_sent) {
            const auto left = removed_at + backstop - std::chrono::steady_clock::now();
            timeout_ms = static_cast<int>(std::max<std::int64_t>(
                0, std::chrono::duration_cast<std::chrono::milliseconds>(left).count() + 1));
        }
        pollfd fds[2] = {{signals->fd(), POLLIN, 0}, {server_ended.get(), POLLIN, 0}};
        if (::poll(fds, 2, timeout_ms) < 0 && errno != EINTR) {
            say(fmt::format("poll: {}; stopping", std::strerror(errno)));
            srv.stop();
            break;
        }
        const bool signalled = signals->take() > 0; // always drained: poll() must block again
        if (removed) {
            if (!stop_sent && std::chrono::steady_clock::now() - removed_at >= backstop) {
                srv.stop();
                stop_sent = true;
            }
            continue;
        }
        if (!signalled)
            continue;
        const int sig = signal_relay::last_signal();
        if (auto ec = dev->remove()) {
            say(fmt::format("cannot remove {}: {}; still serving it (unmount or close it, then "
                            "signal again)",
                            dev->path(), ec.message()));
            continue;
        }
        removed = true;
        removed_at = std::chrono::steady_clock::now();
        say(fmt::format("{}: removed {}", strsignal(sig), dev->path()));
    }
    runner.join();
    if (!removed && dev->remove())
        say(fmt::format("{} could not be removed", dev->path()));
    const auto stats = srv.stats();
    say(fmt::format("stopped; {} requests served, {} failed", stats.total_requests(),
                    stats.total_errors()));
    return status;
}

} // namespace dmuser::examples
