// daemon.hpp: what every example daemon does around its store: the common options and their
// help, and a one-line reason for every failure. The device's life (create or adopt, serve,
// remove on SIGINT/SIGTERM, in that order) is the SDK's dmuser::serve_device.
#pragma once

#include "cli.hpp"
#include "dmuser/block_store.hpp"
#include "dmuser/device.hpp"
#include "dmuser/sd_notify.hpp"
#include "dmuser/serve_device.hpp"
#include "dmuser/signal_relay.hpp"
#include "filter_cli.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fmt/format.h>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

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
    bool attach = false;      // serve an existing device (left by a daemon that died)
    bool read_only = false;   // the device itself is read-only
    bool lock_memory = false; // mlockall: never page the daemon out under memory pressure
    bool io_flusher = true;   // PR_SET_IO_FLUSHER: its allocations do not wait for writeback
    std::vector<std::string> filters; // --filter specs, outermost first (filter_cli.hpp)
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

Filters (any number, the first given is the outermost):
  --filter read-only                  refuse writes; the device is made read-only
  --filter offset:offset=SIZE,length=SIZE   serve a window of the store
  --filter offset:partition=N         serve partition N of an MBR or GPT disk
  --filter delay:OP=TIME[-TIME],...   wait before OP (read, write, flush, discard,
                                      write_zeroes, secure_erase, all); a range: random
  --filter error:KEY=VALUE,...        fail operations: op=OP[+OP...] rate=P (0..1)
                                      from=SIZE to=SIZE trigger=FILE errno=N seed=N
  --filter retry:attempts=N,backoff=TIME,op=OP[+OP...]   retry failed operations
  --filter stats[:file=PATH]          per-op counts and latency (p50, p99, max) at exit
  --filter cache:size=SIZE,block=SIZE,mode=write-through|write-back
                                      an LRU block cache in memory (64M, 64K, write-through)
TIME: 250us, 5ms, 1s. SIZE: bytes, or with K/M/G/T.

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
    } else if (auto v = args.value("--filter"))
        o.filters.emplace_back(*v);
    else if (args.flag("--attach"))
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
// removed from outside (dmuser::serve_device), and returns the exit status. `what` describes
// the store for the startup line ("256 MiB of memory").
template <BlockStore S>
int serve_store(const char* prog, S& store, const DaemonOptions& o, const std::string& what);

template <BlockStore S>
int run_daemon(const char* prog, S& store, const DaemonOptions& o, const std::string& what) {
    if (o.name.empty()) {
        fmt::print(stderr, "{}: --name is required (see --help)\n", prog);
        return 2;
    }
    if (o.filters.empty())
        return serve_store(prog, store, o, what);
    if constexpr (!std::is_void_v<thread_state_t<S>>) {
        fmt::print(stderr,
                   "{}: this daemon's store keeps per-thread state, which --filter "
                   "stacks do not carry\n",
                   prog);
        return 2;
    } else
        try {
            filters::any_store stack = filter_stack(store, o.filters);
            return serve_store(prog, stack, o,
                               fmt::format("{} through {} filter(s)", what, o.filters.size()));
        } catch (const std::invalid_argument& e) {
            fmt::print(stderr, "{}: {}\n", prog, e.what());
            return 2;
        }
}

template <BlockStore S>
int serve_store(const char* prog, S& store, const DaemonOptions& o, const std::string& what) {
    auto say = [prog](const std::string& line) { fmt::print(stderr, "{}: {}\n", prog, line); };
    if (auto why = size_problem(store.size())) {
        say(*why);
        return 1;
    }
    device_options d;
    d.name = o.name;
    d.control = o.control;
    d.attach = o.attach;
    d.read_only = o.read_only;
    d.max_payload = o.max_payload;
    d.server.threads = o.threads;
    d.server.channels = o.channels;
    d.server.depth = o.depth;
    d.server.busy_poll = std::chrono::microseconds(o.poll_us);
    d.server.lock_memory = o.lock_memory;
    d.server.io_flusher = o.io_flusher;
    d.server.stats_interval = std::chrono::seconds(o.stats_secs);
    d.on_ready = [&](const device& dev, std::size_t channels) {
        fmt::print("{}: serving {} ({}) from {}, {} channel(s) on {} thread(s)\n", prog, dev.path(),
                   human_size(store.size()), what, channels, o.threads);
        std::fflush(stdout);
        if (auto ec = sd_notify(fmt::format("READY=1\nSTATUS=serving {}", dev.path())))
            say(fmt::format("cannot tell the service manager it is ready: {}", ec.message()));
    };
    // A signal from here on is counted, and acted on once the device serves.
    std::optional<signal_relay> signals;
    std::optional<device> dev;
    try {
        signals.emplace();
        dev.emplace(open_device(store, d));
    } catch (const std::system_error& e) {
        say(e.code() == std::errc::file_exists && !o.attach
                ? fmt::format("{} (--attach serves an existing device)", e.what())
                : e.what());
        return 1;
    }
    return serve_device(store, *dev, std::move(d), &*signals);
}

} // namespace dmuser::examples
