// dmuser/sd_notify.hpp: tell a service manager about the daemon's state (systemd's notify
// protocol, sd_notify(3)) with one datagram, so a Type=notify unit starts only once the
// device serves.
//
// The protocol is one AF_UNIX datagram of newline-separated KEY=VALUE lines ("READY=1") sent
// to the socket named by $NOTIFY_SOCKET: a path, or '@' and a name in the abstract namespace.
// Written here rather than linked from libsystemd so the header-only SDK adds no library to
// every daemon for twenty lines, and works the same under any manager that speaks it.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <sys/socket.h>
#include <sys/un.h>
#include <system_error>
#include <unistd.h>

namespace dmuser {

// Sends `state` to the notify socket `socket_path` ('/'-absolute, or '@' for an abstract
// name). Returns {} once the datagram is sent, or why not: invalid_argument for an empty or
// relative path, filename_too_long when it does not fit a sockaddr_un, the errno of socket()
// or sendto() otherwise (ENOENT or ECONNREFUSED: nobody listens there; EAGAIN: the
// listener's queue is full).
inline std::error_code sd_notify_to(std::string_view socket_path, std::string_view state) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.size() < 2 || (socket_path[0] != '/' && socket_path[0] != '@'))
        return std::make_error_code(std::errc::invalid_argument);
    // A path needs its NUL inside sun_path; an abstract name is counted by the length alone.
    const bool abstract = socket_path[0] == '@';
    if (socket_path.size() + (abstract ? 0 : 1) > sizeof addr.sun_path)
        return std::make_error_code(std::errc::filename_too_long);
    std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
    if (abstract)
        addr.sun_path[0] = '\0';
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path.size());

    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return {errno, std::generic_category()};
    // A datagram goes whole or not at all: no short write to finish. Never waits (a server
    // thread may be the caller): a manager whose queue is full gets EAGAIN, not a stall.
    const ssize_t n = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                               reinterpret_cast<const sockaddr*>(&addr), len);
    const int err = n < 0 ? errno : 0;
    ::close(fd);
    if (err != 0)
        return {err, std::generic_category()};
    return {};
}

// Sends `state` to $NOTIFY_SOCKET. Without the variable the daemon was not started by a
// service manager that listens, and there is nobody to tell: that is {} too, as in
// sd_notify(3), so a daemon calls this unconditionally.
inline std::error_code sd_notify(std::string_view state) {
    const char* socket_path = std::getenv("NOTIFY_SOCKET");
    if (socket_path == nullptr || *socket_path == '\0')
        return {};
    return sd_notify_to(socket_path, state);
}

} // namespace dmuser
