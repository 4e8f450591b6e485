// dmuser/serve_device.hpp: a daemon's whole life in one call. It creates /dev/mapper/NAME
// (or adopts one a killed daemon left), with table options derived from the store's
// capabilities, serves it, and on SIGINT/SIGTERM removes the device before the server stops,
// so that nothing is left that no one serves:
//
//   my_store store;
//   return dmuser::serve_device(store, {.name = "rd"});   // 0 after a clean stop
//
// The order on a signal: the device is removed while the server still answers; the module
// then ends every channel (ENOTBLK) and the server returns once it has answered all it read.
// A device still open (mounted) cannot be removed: serve_device says so and serves on until
// the next signal. A device removed from outside (dmsetup remove) ends it the same way.
// Every failure is one line through dmuser::log and an exit status of 1. A daemon that words
// its own errors calls open_device (which throws) and then serve_device(store, device, ...).
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/device.hpp"
#include "dmuser/log.hpp"
#include "dmuser/server.hpp"
#include "dmuser/signal_relay.hpp"
#include "dmuser/unique_fd.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <poll.h>
#include <string>
#include <sys/eventfd.h>
#include <system_error>
#include <thread>
#include <unistd.h>

namespace dmuser {

struct device_options {
    std::string name{};            // the device: /dev/mapper/NAME (required)
    std::string control{};         // its channels: /dev/dm-user/CONTROL; empty: NAME
    bool attach = false;           // serve an existing device of that name (after a crash)
    bool read_only = false;        // the device is read-only
    std::uint64_t max_payload = 0; // largest request (table option); 0: the module's default
    // How the device is served; its `name` and `handle_signals` are set by serve_device, and
    // its on_ready is called before the device's own.
    server_options server{};
    // Called once the device serves, with how many channels serve it, on a server thread;
    // must not block.
    std::function<void(const device&, std::size_t channels)> on_ready{};
    // After the device is removed, the server normally ends on ENOTBLK at once; if it has not
    // after this long, it is stopped.
    std::chrono::milliseconds stop_after_removal = std::chrono::seconds(5);
};

// The table for `store`: its size, and options that turn off what it cannot honour.
template <BlockStore S>
user_table table_for(const S& store, const device_options& o) {
    user_table table;
    table.name = o.name;
    table.control = o.control;
    table.sectors = static_cast<std::uint64_t>(const_cast<S&>(store).size()) / 512;
    table.read_only = o.read_only || read_only_store<S>;
    table.max_payload = o.max_payload;
    if constexpr (has_runtime_capabilities<S>) {
        const store_capabilities can = store.capabilities();
        table.read_only = table.read_only || can.read_only;
        table.no_flush = !can.flush && !can.write_fua;
        table.no_discard = !can.discard;
        table.no_secure_erase = !can.secure_erase;
    } else {
        table.no_flush = !has_flush<S> && !has_write_fua<S>;
        table.no_discard = !has_discard<S>;
        table.no_secure_erase = !has_secure_erase<S>;
    }
    return table;
}

namespace detail {
inline void signal_eventfd(int fd) noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}
} // namespace detail

// Creates the device for `store` (or adopts it, with o.attach): throws std::system_error
// with a one-line reason (the module not loaded, the name taken, the table refused...).
template <BlockStore S>
device open_device(const S& store, const device_options& o) {
    const user_table table = table_for(store, o);
    if (table.name.empty())
        throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                                "the device needs a name");
    const std::uint64_t bytes = table.sectors * 512;
    if (bytes == 0 || bytes != static_cast<std::uint64_t>(const_cast<S&>(store).size()))
        throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                                bytes == 0 ? std::string("the device size must not be zero")
                                           : fmt::format("the device size {} is not a multiple "
                                                         "of 512 bytes",
                                                         const_cast<S&>(store).size()));
    return o.attach ? device::adopt(table) : device::create(table);
}

// Serves `dev` until a signal removes it, or it is removed from outside; then removes it
// if it is still there. Returns 0 after a clean stop, else 1 (the reason is logged).
// `relay`: one made before the device, so that a signal that came meanwhile is counted and
// acted on now (null: one is made here).
template <BlockStore S>
int serve_device(S& store, device& dev, device_options o, signal_relay* relay = nullptr) {
    std::optional<signal_relay> own_relay;
    unique_fd server_ended(::eventfd(0, EFD_CLOEXEC));
    try {
        if (!relay)
            relay = &own_relay.emplace();
        if (!server_ended)
            throw std::system_error(errno, std::system_category(), "eventfd");
    } catch (const std::system_error& e) {
        log::error("{}", e.what());
        return 1;
    }
    signal_relay* const signals = relay;

    device_channels source(dev.table().control_name());
    server_options so = std::move(o.server);
    so.name = dev.table().control_name();
    so.handle_signals = false; // ours: the device goes first
    server<S>* serving = nullptr;
    so.on_ready = [&, then = std::move(so.on_ready)] {
        if (then)
            then();
        if (o.on_ready)
            o.on_ready(dev, serving->channels_open());
    };
    server<S> srv(store, source, std::move(so));
    serving = &srv;
    int status = 1;
    std::thread runner([&] {
        try {
            status = srv.run();
        } catch (const std::exception& e) {
            log::error("server: {}", e.what());
        }
        detail::signal_eventfd(server_ended.get());
    });

    bool removed = false, stop_sent = false;
    std::chrono::steady_clock::time_point removed_at;
    for (;;) {
        int timeout_ms = -1;
        if (removed && !stop_sent) {
            const auto left = removed_at + o.stop_after_removal - std::chrono::steady_clock::now();
            timeout_ms = static_cast<int>(std::max<std::int64_t>(
                0, std::chrono::duration_cast<std::chrono::milliseconds>(left).count() + 1));
        }
        pollfd fds[2] = {{signals->fd(), POLLIN, 0}, {server_ended.get(), POLLIN, 0}};
        if (::poll(fds, 2, timeout_ms) < 0 && errno != EINTR) {
            log::error("poll: {}; stopping", std::strerror(errno));
            srv.stop();
            break;
        }
        const bool signalled = signals->take() > 0; // always drained: poll() must block again
        if (fds[1].revents & POLLIN)
            break; // the server has returned
        if (removed) {
            if (!stop_sent &&
                std::chrono::steady_clock::now() - removed_at >= o.stop_after_removal) {
                srv.stop();
                stop_sent = true;
            }
            continue;
        }
        if (!signalled)
            continue;
        const int sig = signal_relay::last_signal();
        if (auto ec = dev.remove()) {
            log::warn("cannot remove {}: {}; still serving it (unmount or close it, then signal "
                      "again)",
                      dev.path(), ec.message());
            continue;
        }
        removed = true;
        removed_at = std::chrono::steady_clock::now();
        log::info("{}: removed {}", strsignal(sig), dev.path());
    }
    runner.join();
    if (!removed && dev.remove()) {
        log::error("{} could not be removed", dev.path());
        status = 1;
    }
    return status;
}

// open_device, then serve_device: the whole life of a daemon's device in one call.
template <BlockStore S>
int serve_device(S& store, device_options o) {
    std::optional<signal_relay> signals;
    std::optional<device> dev;
    try {
        signals.emplace(); // first: a signal from here on is acted on once the device serves
        dev.emplace(open_device(store, o));
    } catch (const std::system_error& e) {
        log::error("{}", e.what());
        return 1;
    }
    return serve_device(store, *dev, std::move(o), &*signals);
}

} // namespace dmuser
