// The notify protocol as systemd's side sees it: a datagram socket bound where NOTIFY_SOCKET
// points (a path, or an abstract '@' name) receives exactly the state that was sent; and the
// failures a daemon can meet come back as error codes, not as silence.
#include "dmuser/sd_notify.hpp"
#include "dmuser/unique_fd.hpp"

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using dmuser::sd_notify;
using dmuser::sd_notify_to;
using dmuser::unique_fd;

namespace {

// A listening end of the protocol, as the service manager has: bound to `name` ('/' path or
// '@' abstract name), removed again when it goes.
class notify_listener {
public:
    explicit notify_listener(std::string name) : name_(std::move(name)) {
        fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        REQUIRE(fd_);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, name_.data(), name_.size());
        if (name_[0] == '@')
            addr.sun_path[0] = '\0';
        const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name_.size());
        REQUIRE(::bind(fd_.get(), reinterpret_cast<const sockaddr*>(&addr), len) == 0);
    }
    ~notify_listener() {
        if (name_[0] == '/')
            ::unlink(name_.c_str());
    }

    // The next datagram; "" if none came within a second (the send already returned, so a
    // datagram that was sent is queued: the wait only bounds a failure).
    std::string receive() {
        pollfd p{fd_.get(), POLLIN, 0};
        if (::poll(&p, 1, 1000) != 1)
            return {};
        char buf[512];
        const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
        return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string{};
    }
    bool empty() {
        char c;
        return ::recv(fd_.get(), &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN;
    }
    const std::string& name() const { return name_; }

private:
    std::string name_;
    unique_fd fd_;
};

std::string unique_name(const char* prefix) {
    static std::atomic<int> n{0};
    return std::string(prefix) + "dmuser-notify-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}

} // namespace

TEST_CASE("sd_notify_to delivers the state to a socket path", "[sd_notify]") {
    notify_listener l(unique_name("/tmp/"));
    REQUIRE_FALSE(sd_notify_to(l.name(), "READY=1\nSTATUS=serving /dev/mapper/x"));
    CHECK(l.receive() == "READY=1\nSTATUS=serving /dev/mapper/x");
}

TEST_CASE("sd_notify_to delivers to an abstract '@' name", "[sd_notify]") {
    notify_listener l(unique_name("@"));
    REQUIRE_FALSE(sd_notify_to(l.name(), "READY=1"));
    CHECK(l.receive() == "READY=1");
}

TEST_CASE("sd_notify reads NOTIFY_SOCKET, and does nothing without it", "[sd_notify]") {
    notify_listener l(unique_name("@"));
    REQUIRE(::setenv("NOTIFY_SOCKET", l.name().c_str(), 1) == 0);
    const auto sent = sd_notify("READY=1");
    ::unsetenv("NOTIFY_SOCKET");
    REQUIRE_FALSE(sent);
    CHECK(l.receive() == "READY=1");

    // Not started by a service manager: nobody to tell, and that is no error.
    CHECK_FALSE(sd_notify("READY=1"));
    CHECK(l.empty());
}

TEST_CASE("sd_notify_to says why a notification could not be sent", "[sd_notify]") {
    CHECK(sd_notify_to("", "READY=1") == std::errc::invalid_argument);
    CHECK(sd_notify_to("relative/socket", "READY=1") == std::errc::invalid_argument);
    CHECK(sd_notify_to("/" + std::string(200, 'x'), "READY=1") == std::errc::filename_too_long);
    // Nobody bound there: the path does not exist, or the abstract name has no socket.
    CHECK(sd_notify_to(unique_name("/tmp/"), "READY=1") == std::errc::no_such_file_or_directory);
    CHECK(sd_notify_to(unique_name("@"), "READY=1") == std::errc::connection_refused);
}
