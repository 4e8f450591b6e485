// dmuser/signal_relay.hpp: SIGINT and SIGTERM turned into a readable eventfd.
//
// While a signal_relay lives, those signals run a handler that only adds one to an eventfd
// (write(2) is async-signal-safe), so any thread may take them: none has to block them,
// and a thread that existed before (a logging thread, a test runner's) cannot be killed
// by one. A server polls fd() on its ring and reads how many came. The destructor puts
// back the handlers that were there before.
//
// The handlers are the process's: relays nest (the newest gets the signals, and its
// destructor hands them back to the one before), so destroy them in reverse order.
#pragma once

#include "dmuser/unique_fd.hpp"

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <signal.h>
#include <sys/eventfd.h>
#include <system_error>
#include <unistd.h>

namespace dmuser {

class signal_relay {
public:
    static constexpr std::array<int, 2> relayed = {SIGINT, SIGTERM};

    signal_relay() {
        fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!fd_)
            throw std::system_error(errno, std::system_category(), "eventfd");
        previous_fd_ = target_fd_.exchange(fd_.get());
        struct sigaction sa {};
        sa.sa_handler = &on_signal;
        sigfillset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        for (std::size_t i = 0; i < relayed.size(); ++i)
            if (::sigaction(relayed[i], &sa, &previous_[i]) != 0) {
                const int err = errno;
                restore(i);
                throw std::system_error(err, std::system_category(), "sigaction");
            }
    }
    signal_relay(const signal_relay&) = delete;
    signal_relay& operator=(const signal_relay&) = delete;
    ~signal_relay() { restore(relayed.size()); }

    // Readable (POLLIN) once a signal came; its 8-byte counter is how many.
    int fd() const noexcept { return fd_.get(); }
    // Signals relayed since the last call (0 if none; does not block).
    std::uint64_t take() noexcept {
        std::uint64_t n = 0;
        if (::read(fd_.get(), &n, sizeof n) != static_cast<ssize_t>(sizeof n))
            return 0;
        return n;
    }
    // The last signal relayed by any relay (0: none yet), for messages.
    static int last_signal() noexcept { return last_signal_.load(); }

private:
    // Constant-initialized and lock-free, so the handler may touch them.
    static inline std::atomic<int> target_fd_{-1};
    static inline std::atomic<int> last_signal_{0};

    static void on_signal(int signo) noexcept {
        const int saved_errno = errno;
        last_signal_.store(signo);
        const int fd = target_fd_.load();
        if (fd >= 0) {
            const std::uint64_t one = 1;
            [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
        }
        errno = saved_errno;
    }
    // Puts back the first `count` handlers, then the previous relay's eventfd.
    void restore(std::size_t count) noexcept {
        for (std::size_t i = 0; i < count; ++i)
            ::sigaction(relayed[i], &previous_[i], nullptr);
        target_fd_.store(previous_fd_);
    }

    unique_fd fd_;
    int previous_fd_ = -1;
    std::array<struct sigaction, relayed.size()> previous_{};
};

} // namespace dmuser
