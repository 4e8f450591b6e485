// dmuser/detail/server_responses.hpp: a slot's loop (read, check, dispatch to the store,
// answer) and the responder: one writev per answer, retried while the module says EBUSY,
// resumed where a Part 1 channel took part of it.
#pragma once

#include "dmuser/server.hpp"

#include <poll.h>

namespace dmuser {

template <BlockStore S>
task<bool> server<S>::send(worker& w, channel& ch, slot& s, const request& req, const reply& rep) {
    encode_response(std::span<std::byte, header_size>(s.header, header_size), req, rep.status);
    s.iov[0] = iovec{s.header, header_size};
    int count = 1;
    std::size_t left = header_size + rep.data.size();
    if (!rep.data.empty()) {
        s.iov[1] = iovec{const_cast<std::byte*>(rep.data.data()), rep.data.size()};
        count = 2;
    }
    iovec* iov = s.iov;
    constexpr std::chrono::nanoseconds max_busy_backoff = std::chrono::milliseconds(1);
    std::chrono::nanoseconds busy_backoff = std::chrono::microseconds(1);
    for (;;) {
        // (Not one conditional expression with two co_awaits: GCC 12 assigned from it
        // runs both writes.)
        io_result got;
        if (std::error_code refused = source_.refuse_response(ch.fd.get()))
            got.res = -refused.value();
        else if (count == 1)
            got = co_await w.r->write(
                ch.fd.get(),
                std::span(static_cast<const std::byte*>(iov[0].iov_base), iov[0].iov_len), 0);
        else
            got = co_await w.r->writev(ch.fd.get(), std::span(iov, count), 0);
        if (got.res == -EAGAIN && ch.polled) {
            // An O_NONBLOCK channel (nowait_refused) whose buffer is full.
            co_await w.r->poll(ch.fd.get(), POLLOUT);
            continue;
        }
        if (got.res == -EINTR || got.res == -EAGAIN)
            continue;
        if (got.res == -EBUSY) {
            // The module cannot take the response yet, and the request (its BIO) stays
            // held until it does: wait on the ring, not by sleeping its thread, and retry
            // until it is taken or the channel closes (the write then fails otherwise).
            co_await w.r->timeout(busy_backoff);
            busy_backoff = std::min<std::chrono::nanoseconds>(busy_backoff * 2, max_busy_backoff);
            continue;
        }
        if (got.res == -ENOTBLK) {
            w.stopping = true;
            target_gone("target removed (ENOTBLK)");
            co_return false;
        }
        if (got.res <= 0) {
            log::error("{}: response to {} failed: {}", source_.describe(), describe(req),
                       got.res == 0 ? std::string("wrote nothing") : got.error().message());
            co_return false;
        }
        std::size_t n = got.bytes();
        if (n >= left)
            co_return true;
        left -= n; // a Part 1 channel may take a response in pieces
        while (n >= iov[0].iov_len) {
            n -= iov[0].iov_len;
            ++iov;
            --count;
        }
        iov[0].iov_base = static_cast<std::byte*>(iov[0].iov_base) + n;
        iov[0].iov_len -= n;
    }
}

template <BlockStore S>
task<void> server<S>::slot_loop(worker& w, channel& ch, slot& s) {
    try {
        request req;
        context_for<S> ctx = make_context(w);
        while (!w.stopping) {
            bool got = whole_messages_ ? co_await read_whole(w, ch, s, req)
                                       : co_await read_stream(w, ch, s, req);
            if (!got)
                continue;
            w.stats.request_started();
            reply rep;
            if (s.landed) {
                // landing_zone checked the request and left out writes needing a flush.
                rep.status = result::success;
            } else if (std::string_view why =
                           s.bad.empty() ? check_request(req, max_payload_, store_size_) : s.bad;
                       !why.empty()) {
                reject(w, why, &req);
                rep.status = result::error;
            } else {
                ctx.seq = req.seq;
                ctx.type = req.type;
                ctx.flags = req.flags;
                rep = co_await dispatch(store_, ctx, req, std::span(s.buffer.get(), s.capacity));
            }
            bool sent = co_await send(w, ch, s, req, rep);
            w.stats.request_finished(req.type, req.len, !sent || rep.status != result::success);
        }
    } catch (const std::exception& e) {
        log::error("{}: channel loop: {}", source_.describe(), e.what());
        w.stopping = true;
        request_stop(true);
    }
    --w.live;
}

} // namespace dmuser
