// dmuser/detail/server_reads.hpp: how a slot reads a request: Part 2 whole messages
// (whole_message_iov, then take_whole), the rest of a WRITE split for write_view
// (read_rest), Part 1's stream of header then payload (read_stream), each over read_channel
// (RWF_NOWAIT, then an exclusive poll linked to the read) and check_read_result (end of
// file, ENOTBLK, errors).
#pragma once

#include "dmuser/server.hpp"

#include <cstring>
#include <fcntl.h>
#include <sys/epoll.h>

namespace dmuser {

template <BlockStore S>
bool server<S>::check_read_result(worker& w, io_result got) {
    switch (detail::classify_read(got.res)) {
    case detail::read_status::bytes:
        return true;
    case detail::read_status::retry:
        return false;
    case detail::read_status::end_of_file:
        w.stopping = true;
        target_gone("end of file on the channel");
        return false;
    case detail::read_status::target_removed:
        w.stopping = true;
        target_gone("target removed (ENOTBLK)");
        return false;
    case detail::read_status::failed:
        break;
    }
    w.stopping = true;
    fatal("read", got.error());
    return false;
}

template <BlockStore S>
void server<S>::reject(worker& w, std::string_view why, const request* req,
                       std::size_t message_bytes) {
    w.stats.malformed();
    // The arguments are formatted before log::error looks at the level: a daemon with
    // logging off must not allocate for each bad request.
    if (!log::enabled(log::level::error))
        return;
    if (req)
        log::error("{}: malformed request rejected ({}): {}", source_.describe(), why,
                   describe(*req));
    else
        log::error("{}: malformed message rejected: {} of {} bytes", source_.describe(), why,
                   message_bytes);
}

// A file that refuses RWF_NOWAIT (no FMODE_NOWAIT: a socket or pipe before Linux 6.6,
// say) gets O_NONBLOCK instead. io_uring may then poll such a read itself, but it still
// never waits in read(). True: read again.
template <BlockStore S>
bool server<S>::nowait_refused(channel& ch, io_result got) {
    if (got.res != -EOPNOTSUPP || ch.read_flags == 0)
        return false;
    ch.read_flags = 0;
    const int fd = ch.fd.get();
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        log::warn("{}: neither RWF_NOWAIT nor O_NONBLOCK: {}; reads wait in the kernel",
                  source_.describe(), std::strerror(errno));
        ch.polled = false;
    }
    return true;
}

// One read of a channel. On a polled channel it never waits in the kernel: finding
// nothing (-EAGAIN), it waits in a poll for `events` that is linked to the next read.
// With a slot (a read that may take a new request), that wait is cancellable by
// stop_worker and ends once the worker stops; without one (the rest of a request this
// slot holds), it waits until the rest comes. slot_loop runs the same loop itself, so
// that a request's read needs no coroutine frame of its own.
template <BlockStore S>
task<io_result> server<S>::read_channel(worker& w, channel& ch, slot* s, std::span<const iovec> iov,
                                        unsigned events) {
    bool poll_first = first_read_polls(w, ch, s);
    io_result got;
    do
        got = co_await read_once(w, ch, s, iov, events, poll_first);
    while (read_again(w, ch, s, got, poll_first));
    co_return got;
}

// read_channel's first read: whether it goes straight to the poll. A slot whose read just
// found nothing will likely find nothing next time too, and the failed read costs a CQE
// and a turn of the loop.
template <BlockStore S>
bool server<S>::first_read_polls(worker& w, channel& ch, slot* s) {
    const bool poll_first = s && s->poll_first_left > 0 && ch.polled && !w.stopping;
    if (poll_first)
        --s->poll_first_left;
    return poll_first;
}

// One try of read_channel's, behind a poll or not; the slot keeps its id for stop_worker.
template <BlockStore S>
typename server<S>::channel_read server<S>::read_once(worker& w, channel& ch, slot* s,
                                                      std::span<const iovec> iov, unsigned events,
                                                      bool poll_first) {
    return channel_read{
        w.r->readv_polled_if(poll_first, ch.fd.get(), events, iov, 0, ch.read_flags),
        s ? &s->pending_read : nullptr};
}

// After one try: true to read again, now behind a poll if the try found nothing.
template <BlockStore S>
bool server<S>::read_again(worker& w, channel& ch, slot* s, io_result got, bool& poll_first) {
    // How many reads a slot goes straight to the poll after a plain one found nothing.
    constexpr unsigned poll_first_streak = 16;
    if (got.res == -EAGAIN && ch.polled && !(s && w.stopping)) {
        if (s && !poll_first)
            s->poll_first_left = poll_first_streak;
        poll_first = true;
        return true;
    }
    return nowait_refused(ch, got);
}

// The iovecs of a whole-message read (Part 2): the header, then the payload.
template <BlockStore S>
std::span<const iovec> server<S>::whole_message_iov(slot& s) {
    s.iov[0] = iovec{s.header, header_size};
    s.iov[1] = iovec{s.buffer.get(), read_size_};
    return std::span<const iovec>(s.iov, 2);
}

// What a whole-message read brought: checked, and decoded into req (with s.bad set if it
// is malformed). A WRITE the module split (split_writes_) needs read_rest() as well.
template <BlockStore S>
typename server<S>::took server<S>::take_whole(worker& w, slot& s, request& req, io_result got) {
    if (!check_read_result(w, got))
        return took::nothing;
    const std::size_t n = got.bytes();
    const detail::whole_read_verdict v =
        detail::judge_whole_read(std::span<const std::byte, header_size>(s.header, header_size), n,
                                 {read_size_, max_payload_, split_writes_});
    if (v.what == detail::whole_read_verdict::kind::too_short) {
        reject(w, "short message", nullptr, n);
        return took::nothing;
    }
    req = v.req;
    s.bad = v.bad;
    s.landed = false;
    if (v.what == detail::whole_read_verdict::kind::part_of_write)
        return took::part_of_write;
    if (v.bad.empty() && req.carries_payload())
        req.payload = std::span<const std::byte>(s.buffer.get(), req.len);
    return took::request;
}

// The rest of a request this slot has begun: not exclusive, so it takes no wake-up meant
// for a new request.
template <BlockStore S>
task<bool> server<S>::read_fully(worker& w, channel& ch, std::byte* at, std::size_t n) {
    while (n > 0) {
        const iovec iov{at, n};
        io_result got = co_await read_channel(w, ch, nullptr, std::span(&iov, 1), EPOLLIN);
        if (got.res == -EINTR || got.res == -EAGAIN)
            continue;
        if (!check_read_result(w, got))
            co_return false;
        at += got.bytes();
        n -= got.bytes();
    }
    co_return true;
}

// Where a WRITE's payload may be read to: the store's own memory (write_view), or null
// for the slot's buffer.
template <BlockStore S>
std::byte* server<S>::landing_zone(slot& s, const request& req) {
    if constexpr (has_write_view<S>) {
        // write_view_above == 0 is "never", on Part 1 too.
        if (opts_.write_view_above == 0 || req.type != DM_USER_REQ_MAP_WRITE || req.len == 0 ||
            !s.bad.empty() || !check_request(req, max_payload_, store_size_).empty())
            return nullptr;
        // Ordering against a flush needs the store's own write paths.
        if ((has_flush<S> || has_write_fua<S>)&&(req.has(DM_USER_REQ_MAP_FLAG_PREFLUSH) ||
                                                 req.has(DM_USER_REQ_MAP_FLAG_FUA)))
            return nullptr;
        std::span<std::byte> view;
        try {
            view = store_.write_view(req.offset(), req.len);
        } catch (...) {
            log::error("{}: write_view threw: {}; using write()", describe(req),
                       describe(std::current_exception()));
            return nullptr;
        }
        if (view.size() != req.len)
            return nullptr;
        s.landed = true;
        return view.data();
    } else {
        (void)s;
        (void)req;
        return nullptr;
    }
}

// The rest of a WRITE whose read stopped after `have` bytes: into the store's memory when
// it lends it, else into the slot's buffer.
template <BlockStore S>
task<bool> server<S>::read_rest(worker& w, channel& ch, slot& s, request& req, std::size_t have) {
    std::byte* const buffered = s.buffer.get();
    const std::size_t got = have - header_size;
    std::byte* dest = landing_zone(s, req);
    if (dest)
        std::memcpy(dest, buffered, got);
    else
        dest = buffered;
    if (!co_await read_fully(w, ch, dest + got, req.len - got))
        co_return false;
    if (!s.landed)
        req.payload = std::span<const std::byte>(buffered, req.len);
    co_return true;
}

template <BlockStore S>
void server<S>::ensure_capacity(slot& s, std::size_t bytes) {
    if (bytes <= s.capacity)
        return; // (bytes of payload)
    std::size_t cap = s.capacity;
    while (cap < bytes)
        cap *= 2;
    s.buffer = detail::allocate_pages(cap);
    s.capacity = cap;
}

template <BlockStore S>
task<bool> server<S>::read_stream(worker& w, channel& ch, slot& s, request& req) {
    // Only a read that has not started a request may be cancelled: after the first byte
    // the request is ours to answer.
    s.iov[0] = iovec{s.header, header_size};
    io_result got = co_await read_channel(w, ch, &s, std::span<const iovec>(s.iov, 1),
                                          EPOLLIN | EPOLLEXCLUSIVE);
    if (!check_read_result(w, got))
        co_return false;
    std::size_t have = got.bytes();
    if (have < header_size && !co_await read_fully(w, ch, s.header + have, header_size - have))
        co_return false;
    req = decode_header(std::span<const std::byte, header_size>(s.header, header_size));
    s.bad = {};
    s.landed = false;
    const detail::stream_payload_plan plan = detail::plan_stream_payload(req, max_payload_);
    if (plan.skip) {
        s.bad = "length over the maximum payload";
        std::uint64_t left = plan.read;
        while (left > 0) {
            std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, s.capacity));
            if (!co_await read_fully(w, ch, s.buffer.get(), n))
                co_return false;
            left -= n;
        }
        co_return true;
    }
    ensure_capacity(s, plan.buffer);
    if (plan.read > 0) {
        // The header came alone, so the payload may go straight to the store.
        std::byte* dest = landing_zone(s, req);
        if (!co_await read_fully(w, ch, dest ? dest : s.buffer.get(), req.len))
            co_return false;
        if (!s.landed)
            req.payload = std::span<const std::byte>(s.buffer.get(), req.len);
    }
    co_return true;
}

} // namespace dmuser
