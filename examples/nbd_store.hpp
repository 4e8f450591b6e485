// nbd_store.hpp: any NBD server's export as a store, through libnbd's asynchronous API. Each
// server thread has a connection of its own (per-thread state), whose socket is polled on
// that thread's io_uring: no thread of libnbd's and none of ours. NBD commands complete in
// libnbd's callbacks, which run inside nbd_aio_notify_read on the same thread and resume the
// request through a remote_completion.
//
// Flush, FUA, trim and zero are used where the server offers them (the device table says
// what it does not); structured replies are asked for (libnbd's default). A connection that
// dies fails its commands with EIO; with `reconnect`, the next request on that thread
// connects again (blocking its thread for the connect).
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/log.hpp"
#include "dmuser/remote_completion.hpp"
#include "dmuser/request_context.hpp"
#include "dmuser/ring.hpp"
#include "dmuser/spawn.hpp"
#include "dmuser/task.hpp"

#include <cerrno>
#include <cstdint>
#include <libnbd.h>
#include <memory>
#include <poll.h>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace dmuser::examples {

struct nbd_options {
    std::string uri;        // nbd://HOST[:PORT][/EXPORT] or nbd+unix:///EXPORT?socket=PATH
    bool reconnect = false; // connect again after the server went away
};

// One libnbd handle, polled on the ring of the thread that made it.
class nbd_connection {
public:
    explicit nbd_connection(const std::string& uri) : h_(nbd_create()) {
        if (!h_)
            throw std::runtime_error(std::string("libnbd: ") + nbd_get_error());
        if (nbd_connect_uri(h_, uri.c_str()) == -1) {
            std::string why = nbd_get_error();
            nbd_close(h_);
            throw std::runtime_error("cannot connect to " + uri + ": " + why);
        }
    }
    nbd_connection(const nbd_connection&) = delete;
    nbd_connection& operator=(const nbd_connection&) = delete;
    ~nbd_connection() {
        if (!nbd_aio_is_dead(h_) && !nbd_aio_is_closed(h_))
            nbd_shutdown(h_, 0);
        nbd_close(h_);
    }

    nbd_handle* handle() const noexcept { return h_; }
    bool dead() const noexcept { return nbd_aio_is_dead(h_) || nbd_aio_is_closed(h_); }

    // Drives the socket on this thread's ring until the connection dies, the ring closes or
    // stop() is called. It holds the connection until it ends.
    static task<void> pump(std::shared_ptr<nbd_connection> self) { co_await self->drive(); }
    void stop() {
        if (poll_id_)
            this_ring().request_cancel(poll_id_);
    }

private:
    task<void> drive() {
        ring& r = this_ring();
        while (!dead()) {
            const unsigned dir = nbd_aio_get_direction(h_);
            armed_ = (dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
                     (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0);
            io_op wait = r.poll(nbd_aio_get_fd(h_), armed_ ? armed_ : POLLIN);
            poll_id_ = wait.id();
            io_result got = co_await wait;
            poll_id_ = 0;
            if (got.res == -ECANCELED) {
                if (std::exchange(rearm_, false))
                    continue; // a command needs the other direction
                co_return;    // the ring is closing
            }
            if (got.res < 0)
                co_return;
            if ((got.res & (POLLIN | POLLHUP | POLLERR)) && nbd_aio_notify_read(h_) == -1)
                break;
            if ((got.res & POLLOUT) && nbd_aio_notify_write(h_) == -1)
                break;
        }
        const char* why = nbd_get_error();
        log::error("NBD connection lost: {}", why ? why : "the server closed it");
    }

public:
    // After a command was queued: if it waits to be written and the poll does not wait for
    // POLLOUT, poll again with it.
    void kick() {
        if ((nbd_aio_get_direction(h_) & LIBNBD_AIO_DIRECTION_WRITE) && !(armed_ & POLLOUT) &&
            poll_id_) {
            rearm_ = true;
            this_ring().request_cancel(poll_id_);
        }
    }

private:
    nbd_handle* h_;
    unsigned armed_ = 0;
    std::uint64_t poll_id_ = 0;
    bool rearm_ = false;
};

class nbd_store {
public:
    struct thread_state {
        std::shared_ptr<nbd_connection> conn; // shared with its pump, which holds its address
    };

    // Connects once to learn the export's size and what the server can do.
    explicit nbd_store(nbd_options o) : o_(std::move(o)) {
        nbd_connection probe(o_.uri);
        nbd_handle* h = probe.handle();
        const std::int64_t size = nbd_get_size(h);
        if (size < 0)
            throw std::runtime_error(std::string("NBD export size: ") + nbd_get_error());
        size_ = static_cast<std::uint64_t>(size);
        can_.flush = nbd_can_flush(h) == 1;
        can_.write_fua = nbd_can_fua(h) == 1;
        can_.discard = nbd_can_trim(h) == 1;
        can_.write_zeroes = true; // emulated with writes where the server cannot zero
        can_.read_only = nbd_is_read_only(h) == 1;
        can_zero_ = nbd_can_zero(h) == 1;
        multi_conn_ = nbd_can_multi_conn(h) == 1;
    }

    std::uint64_t size() const { return size_; }
    store_capabilities capabilities() const { return can_; }
    // Whether a flush on one connection covers writes made on the others (NBD multi-conn):
    // without it, serve with one thread.
    bool multi_conn() const { return multi_conn_; }

    thread_state open_thread(unsigned) { return connect(); }

    task<std::error_code> read(request_context<thread_state>& c, std::uint64_t off,
                               std::span<std::byte> out) {
        co_return co_await command(c.state, [&](nbd_handle* h, nbd_completion_callback cb) {
            return nbd_aio_pread(h, out.data(), out.size(), off, cb, 0);
        });
    }
    task<std::error_code> write(request_context<thread_state>& c, std::uint64_t off,
                                std::span<const std::byte> in) {
        co_return co_await command(c.state, [&](nbd_handle* h, nbd_completion_callback cb) {
            return nbd_aio_pwrite(h, in.data(), in.size(), off, cb, 0);
        });
    }
    task<std::error_code> write_fua(request_context<thread_state>& c, std::uint64_t off,
                                    std::span<const std::byte> in) {
        if (!can_.write_fua) {
            if (auto ec = co_await write(c, off, in))
                co_return ec;
            co_return co_await flush(c);
        }
        co_return co_await command(c.state, [&](nbd_handle* h, nbd_completion_callback cb) {
            return nbd_aio_pwrite(h, in.data(), in.size(), off, cb, LIBNBD_CMD_FLAG_FUA);
        });
    }
    task<std::error_code> flush(request_context<thread_state>& c) {
        if (!can_.flush)
            co_return std::error_code{};
        co_return co_await command(c.state, [&](nbd_handle* h, nbd_completion_callback cb) {
            return nbd_aio_flush(h, cb, 0);
        });
    }
    task<std::error_code> discard(request_context<thread_state>& c, std::uint64_t off,
                                  std::uint64_t len) {
        if (!can_.discard)
            co_return std::make_error_code(std::errc::operation_not_supported);
        co_return co_await command(c.state, [&](nbd_handle* h, nbd_completion_callback cb) {
            return nbd_aio_trim(h, len, off, cb, 0);
        });
    }
    task<std::error_code> write_zeroes(request_context<thread_state>& c, std::uint64_t off,
                                       std::uint64_t len) {
        if (can_zero_)
            co_return co_await command(c.state, [&](nbd_handle* h, nbd_completion_callback cb) {
                return nbd_aio_zero(h, len, off, cb, 0);
            });
        static const std::vector<std::byte> zeros(64 << 10);
        while (len > 0) {
            const std::size_t n = std::min<std::uint64_t>(len, zeros.size());
            if (auto ec = co_await write(c, off, std::span(zeros.data(), n)))
                co_return ec;
            off += n;
            len -= n;
        }
        co_return std::error_code{};
    }

private:
    thread_state connect() {
        thread_state s{std::make_shared<nbd_connection>(o_.uri)};
        spawn(nbd_connection::pump(s.conn), "NBD socket pump");
        return s;
    }

    static int on_done(void* user_data, int* error) {
        static_cast<remote_completion<int>*>(user_data)->complete(*error);
        return 1; // retire the command
    }

    // Starts one command with `start(handle, callback)` and awaits its completion.
    template <typename Start>
    task<std::error_code> command(thread_state& s, Start start) {
        if (s.conn->dead()) {
            if (!o_.reconnect)
                co_return std::make_error_code(std::errc::io_error);
            try {
                s.conn->stop(); // its pump lets go of it
                s = connect();
                log::info("NBD: connected again to {}", o_.uri);
            } catch (const std::exception& e) {
                log::error("NBD: {}", e.what());
                co_return std::make_error_code(std::errc::io_error);
            }
        }
        remote_completion<int> done;
        if (start(s.conn->handle(), nbd_completion_callback{&on_done, &done, nullptr}) == -1) {
            const char* why = nbd_get_error();
            log::error("NBD command: {}", why ? why : "refused");
            co_return std::error_code(nbd_get_errno() ? nbd_get_errno() : EIO,
                                      std::generic_category());
        }
        s.conn->kick();
        if (int error = co_await done)
            co_return std::error_code(error, std::generic_category());
        co_return std::error_code{};
    }

    nbd_options o_;
    std::uint64_t size_ = 0;
    store_capabilities can_;
    bool can_zero_ = false;
    bool multi_conn_ = false;
};

} // namespace dmuser::examples
