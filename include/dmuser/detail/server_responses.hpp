// dmuser/detail/server_responses.hpp: a slot's loop (read, check, dispatch to the store,
// answer) and the responder: one writev per answer, awaited in the loop itself; send()
// retries it while the module says EBUSY and resumes where a Part 1 channel took part of it.
#pragma once

#include "dmuser/server.hpp"

#include <poll.h>
#include <sys/epoll.h>

namespace dmuser {

// The response's header, and the iovecs of the response in the slot: header and data.
// Returns how many there are (1 or 2); `bytes` gets the response's length.
template <BlockStore S>
int server<S>::prepare_response(slot& s, const request& req, const reply& rep, std::size_t& bytes) {
    return detail::lay_out_response(std::span<std::byte, header_size>(s.header, header_size), req,
                                    rep.status, rep.data, s.iov, bytes);
}

// One write of iov[0, count) to the channel.
template <BlockStore S>
io_op server<S>::write_response(worker& w, channel& ch, const iovec* iov, int count) {
    if (count == 1)
        return w.r->write(ch.fd.get(),
                          std::span(static_cast<const std::byte*>(iov[0].iov_base), iov[0].iov_len),
                          0);
    return w.r->writev(ch.fd.get(), std::span(iov, count), 0);
}

// The rest of a response (slot_loop's first write did not finish it): `got` is that
// write's result, `count` and `left` what it was asked to write. Retried while the module
// says EBUSY, resumed where a Part 1 channel took part of it.
template <BlockStore S>
task<bool> server<S>::send(worker& w, channel& ch, slot& s, const request& req, io_result got,
                           int count, std::size_t left) {
    iovec* iov = s.iov;
    constexpr std::chrono::nanoseconds max_busy_backoff = std::chrono::milliseconds(1);
    std::chrono::nanoseconds busy_backoff = std::chrono::microseconds(1);
    for (;;) {
        if (got.res == -EAGAIN && ch.polled) {
            // An O_NONBLOCK channel (nowait_refused) whose buffer is full.
            co_await w.r->poll(ch.fd.get(), POLLOUT);
        } else if (got.res == -EINTR || got.res == -EAGAIN) {
            // again
        } else if (got.res == -EBUSY) {
            // The module cannot take the response yet, and the request (its BIO) stays
            // held until it does: wait on the ring, not by sleeping its thread, and retry
            // until it is taken or the channel closes (the write then fails otherwise).
            co_await w.r->timeout(busy_backoff);
            busy_backoff = std::min<std::chrono::nanoseconds>(busy_backoff * 2, max_busy_backoff);
        } else if (got.res == -ENOTBLK) {
            w.stopping = true;
            target_gone("target removed (ENOTBLK)");
            co_return false;
        } else if (got.res <= 0) {
            log::error("{}: response to {} failed: {}", source_.describe(), describe(req),
                       got.res == 0 ? std::string("wrote nothing") : got.error().message());
            co_return false;
        } else {
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
        // (Not one conditional expression with two co_awaits: GCC 12 assigned from it
        // runs both writes.)
        if (std::error_code refused = source_.refuse_response(ch.fd.get()))
            got.res = -refused.value();
        else
            got = co_await write_response(w, ch, iov, count);
    }
}

template <BlockStore S>
task<void> server<S>::slot_loop(worker& w, channel& ch, slot& s) {
    try {
        request req;
        context_for<S> ctx = make_context(w);
        while (!w.stopping) {
            bool got = false;
            if (whole_messages_) {
                // Exclusive: a new request wakes one waiting slot (wake_up_interruptible_poll
                // wakes one exclusive waiter), and the woken slot's read is already linked
                // to its poll.
                // (read_channel's loop, without a coroutine of its own.)
                const std::span<const iovec> iov = whole_message_iov(s);
                bool poll_first = first_read_polls(w, ch, &s);
                io_result read;
                do
                    read = co_await read_once(w, ch, &s, iov, EPOLLIN | EPOLLEXCLUSIVE, poll_first);
                while (read_again(w, ch, &s, read, poll_first));
                took t = take_whole(w, s, req, read);
                if (t == took::part_of_write)
                    got = co_await read_rest(w, ch, s, req, read.bytes());
                else
                    got = t == took::request;
            } else {
                got = co_await read_stream(w, ch, s, req);
            }
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
                // A store whose read and write complete at once needs no coroutine.
                const std::span<std::byte> area(s.buffer.get(), s.capacity);
                if (!dispatch_now(store_, ctx, req, area, rep))
                    rep = co_await dispatch(store_, ctx, req, area);
            }
            // The response: one write, nearly always taken whole; send() finishes the rest.
            std::size_t bytes = 0;
            const int count = prepare_response(s, req, rep, bytes);
            io_result wrote;
            if (std::error_code refused = source_.refuse_response(ch.fd.get()))
                wrote.res = -refused.value();
            else
                wrote = co_await write_response(w, ch, s.iov, count);
            bool sent = wrote.bytes() >= bytes;
            if (!sent)
                sent = co_await send(w, ch, s, req, wrote, count, bytes);
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
