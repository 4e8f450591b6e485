// dmuser/detail/server_impl.hpp: the member functions of dmuser::server (server.hpp).
#pragma once

#include "dmuser/server.hpp"

#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>

namespace dmuser {

template <BlockStore S>
int server<S>::run() {
    if (started_.exchange(true))
        throw std::logic_error("dmuser::server::run() called twice: make a new server");
    store_size_ = store_.size();
    auto open_channels = [&](std::size_t count) {
        while (channels_.size() < count) {
            auto ch = std::make_unique<channel>();
            ch->fd = source_.open_channel();
            channels_.push_back(std::move(ch));
        }
    };
    // A WRITE may be read in two (split_writes_ below): its first read is this long.
    if constexpr (has_write_view<S>)
        if (opts_.write_view_above > 0)
            source_.reads_of(header_size + opts_.write_view_above);
    open_channels(opts_.channels);
    module_ = source_.query(channels_.front()->fd.get());
    whole_messages_ = module_.has_feature(DM_USER_FEATURE_WHOLE_MESSAGE);
    if (module_.extensions) {
        const auto& in = module_.info;
        max_payload_ = in.max_payload;
        if (max_payload_ == 0 || max_payload_ > (256u << 20))
            throw std::runtime_error(
                fmt::format("{}: module reports max_payload {}, outside 1..256 MiB",
                            source_.describe(), max_payload_));
        log::info("{}: dm-user {}.{}.{}, features {:#x}, ops {:#x}, max payload {} B, {} B",
                  source_.describe(), in.version_major, in.version_minor, in.version_patch,
                  in.features, in.ops, max_payload_, in.device_sectors * sector_size);
        if (in.device_sectors * sector_size > store_size_)
            log::warn("device is {} B but the store only {} B: requests past the store fail",
                      in.device_sectors * sector_size, store_size_);
    } else {
        max_payload_ = opts_.part1_max_payload;
        log::info("{}: module without DM_USER_IOC_GET_INFO (Android's Part 1 ABI): one "
                  "request at a time per channel",
                  source_.describe());
    }
    if (!whole_messages_ && module_.extensions)
        log::warn("{}: module lacks whole-message reads: one request at a time per channel",
                  source_.describe());

    unsigned depth = whole_messages_ ? opts_.depth : 1;
    if (!whole_messages_) {
        // One request in flight per channel: depth comes from more channels, or QD32
        // runs as QD1. Bounded, as each is a file descriptor.
        open_channels(std::min<std::size_t>(std::size_t(opts_.channels) * opts_.depth,
                                            std::max<std::size_t>(opts_.channels, 1024)));
    }
    const std::size_t first_capacity =
        whole_messages_ ? max_payload_ : std::min<std::uint64_t>(max_payload_, 128u << 10);
    read_size_ = first_capacity;
    if constexpr (has_write_view<S>)
        split_writes_ =
            whole_messages_ && opts_.write_view_above > 0 && opts_.write_view_above < max_payload_;
    if (split_writes_) {
        // The rest of a split WRITE comes with its channel's next read: one read
        // outstanding per channel, so one channel per slot.
        read_size_ = opts_.write_view_above;
        open_channels(std::size_t(opts_.channels) * depth);
        depth = 1;
    }
    if (module_.extensions && opts_.requeue_on_close &&
        module_.has_feature(DM_USER_FEATURE_REQUEUE))
        for (auto& ch : channels_)
            if (auto ec = source_.set_channel_flags(ch->fd.get(), DM_USER_CHANNEL_REQUEUE_ON_CLOSE))
                log::warn("{}: DM_USER_CHANNEL_REQUEUE_ON_CLOSE: {}", source_.describe(),
                          ec.message());
    if (module_.has_feature(DM_USER_FEATURE_POLL))
        for (auto& ch : channels_) {
            ch->polled = true;
            ch->read_flags = RWF_NOWAIT;
        }
    for (auto& ch : channels_)
        for (unsigned d = 0; d < depth; ++d) {
            auto s = std::make_unique<slot>();
            s->buffer = detail::allocate_pages(first_capacity);
            s->capacity = first_capacity;
            ch->slots.push_back(std::move(s));
        }
    channels_open_ = channels_.size();
    {
        std::lock_guard lock(mutex_);
        for (unsigned t = 0; t < opts_.threads; ++t) {
            workers_.push_back(std::make_unique<worker>());
            workers_.back()->index = t;
        }
        for (std::size_t c = 0; c < channels_.size(); ++c)
            workers_[c % opts_.threads]->channels.push_back(channels_[c].get());
    }
    if (opts_.lock_memory && ::mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
        log::warn("mlockall: {}; pages may be swapped out under memory pressure",
                  std::strerror(errno));

    // Handlers, not a blocked mask: a thread that was there before run() (and does not
    // block the signals) takes them as well as any.
    std::optional<signal_relay> signals;
    if (opts_.handle_signals) {
        try {
            signals.emplace();
        } catch (const std::system_error& e) {
            log::warn("{}; SIGINT/SIGTERM will not stop the server cleanly", e.what());
        }
    }

    auto wind_down = [&] {
        finished_ = true;
        channels_open_ = 0;
    };
    std::vector<std::thread> threads;
    try {
        for (unsigned t = 1; t < opts_.threads; ++t) {
            std::function<void()> body = [this, t] { thread_main(t, nullptr); };
            threads.push_back(opts_.start_thread ? opts_.start_thread(std::move(body))
                                                 : std::thread(std::move(body)));
        }
    } catch (...) {
        // E.g. EAGAIN under a pids cgroup's limit: the threads already started stop (they
        // answer what they read) and are joined, and the caller gets the error.
        request_stop(false);
        for (auto& th : threads)
            th.join();
        wind_down();
        channels_.clear();
        throw;
    }
    thread_main(0, signals ? &*signals : nullptr);
    for (auto& th : threads)
        th.join();
    wind_down();
    log::info("{}: stopped; {}", source_.describe(), stats().to_string());
    channels_.clear();
    return failed_ ? 1 : 0;
}

template <BlockStore S>
void server<S>::thread_main(unsigned index, signal_relay* signals) {
    worker& w = *workers_[index];
    if (opts_.io_flusher && ::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0 &&
        !io_flusher_warned_.exchange(true))
        log::warn("PR_SET_IO_FLUSHER: {} (needs CAP_SYS_RESOURCE); without it, writeback "
                  "through this device under memory pressure can deadlock",
                  std::strerror(errno));
    try {
        // Every read this thread keeps outstanding, each with a cancellation and then a
        // response, may complete at once: the CQ holds them all (the kernel's maximum is
        // 65536), and never less than twice the SQ.
        std::size_t slots = 0;
        for (channel* ch : w.channels)
            slots += ch->slots.size();
        const auto cq_entries = static_cast<unsigned>(std::min<std::size_t>(
            65536, std::max<std::size_t>(2 * std::size_t(opts_.ring_entries), 2 * slots + 16)));
        ring r(opts_.ring_entries, cq_entries);
        r.set_busy_poll(opts_.busy_poll);
        // Only posting ends here: ~ring (after this) may still resume coroutines that use
        // w.r while it cancels what they wait for.
        struct unregister {
            server* self;
            worker& w;
            ~unregister() {
                std::lock_guard lock(self->mutex_);
                w.mailbox = nullptr;
            }
        } registration{this, w};
        w.r = &r;
        bool stop_now = false;
        {
            std::lock_guard lock(mutex_);
            w.mailbox = &r;
            stop_now = stop_requested_;
            if (stop_now)
                w.stopping = true;
        }
        open_thread_state(w);
        for (channel* ch : w.channels)
            for (auto& s : ch->slots) {
                ++w.live;
                spawn(slot_loop(w, *ch, *s), "channel loop");
            }
        if (stop_now)
            arm_stop_deadline(w);
        if (signals)
            spawn(watch_signals(w, *signals), "signal watcher");
        if (index == 0 && opts_.stats_interval.count() > 0)
            spawn(print_stats(w), "stats printer");
        if (++ready_threads_ == opts_.threads && opts_.on_ready) {
            try {
                opts_.on_ready();
            } catch (...) {
                log::error("server_options::on_ready threw: {}",
                           describe(std::current_exception()));
            }
        }
        try {
            while (w.live > 0 && !w.gave_up)
                r.run_once(true);
        } catch (...) {
            // The loops must see that they stop before ~ring cancels their reads: a
            // cancelled read is otherwise read again.
            w.stopping = true;
            throw;
        }
    } catch (...) {
        log::error("server thread {}: {}", index, describe(std::current_exception()));
        request_stop(true);
    }
    // The ring is gone, and with it every request of this thread: the state may go too.
    if constexpr (!std::is_void_v<thread_state_t<S>>)
        w.state.reset();
}

template <BlockStore S>
void server<S>::open_thread_state([[maybe_unused]] worker& w) {
    using state_type = thread_state_t<S>;
    if constexpr (has_open_thread<S>) {
        w.state.emplace(store_.open_thread(w.index));
    } else if constexpr (!std::is_void_v<state_type>) {
        static_assert(std::is_default_constructible_v<state_type>,
                      "a store's thread_state needs a default constructor, or the store an "
                      "open_thread(unsigned index) that makes one");
        w.state.emplace();
    }
}

template <BlockStore S>
context_for<S> server<S>::make_context(worker& w) {
    request_info info;
    info.thread = w.index;
    info.stopping_ = &w.stopping;
    info.deadline_ = &w.give_up_at;
    if constexpr (std::is_void_v<thread_state_t<S>>)
        return request_context<>(info);
    else
        return context_for<S>(info, *w.state);
}

template <BlockStore S>
bool server<S>::check_read_result(worker& w, io_result got) {
    if (got.res > 0)
        return true;
    switch (got.res) {
    case -ECANCELED:
    case -EINTR:
    case -EAGAIN:
        return false;
    case 0:
        w.stopping = true;
        target_gone("end of file on the channel");
        return false;
    case -ENOTBLK:
        w.stopping = true;
        target_gone("target removed (ENOTBLK)");
        return false;
    default:
        w.stopping = true;
        fatal("read", got.error());
        return false;
    }
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
// slot holds), it waits until the rest comes.
template <BlockStore S>
task<io_result> server<S>::read_channel(worker& w, channel& ch, slot* s, std::span<const iovec> iov,
                                        unsigned events) {
    // How many reads a slot goes straight to the poll after a plain one found nothing.
    constexpr unsigned poll_first_streak = 16;
    bool poll_first = s && s->poll_first_left > 0 && ch.polled && !w.stopping;
    if (poll_first)
        --s->poll_first_left;
    for (;;) {
        io_result got;
        if (poll_first) {
            polled_read_op rd = w.r->readv_when_ready(ch.fd.get(), events, iov, 0, ch.read_flags);
            if (s)
                s->pending_read = rd.id();
            got = co_await rd;
        } else {
            io_op rd = w.r->readv(ch.fd.get(), iov, 0, ch.read_flags);
            if (s)
                s->pending_read = rd.id();
            got = co_await rd;
        }
        if (s)
            s->pending_read = 0;
        if (got.res == -EAGAIN && ch.polled && !(s && w.stopping)) {
            if (s && !poll_first)
                s->poll_first_left = poll_first_streak;
            poll_first = true;
            continue;
        }
        if (nowait_refused(ch, got))
            continue;
        co_return got;
    }
}

template <BlockStore S>
task<bool> server<S>::read_whole(worker& w, channel& ch, slot& s, request& req) {
    s.iov[0] = iovec{s.header, header_size};
    s.iov[1] = iovec{s.buffer.get(), read_size_};
    // Exclusive: a new request wakes one waiting slot (wake_up_interruptible_poll wakes
    // one exclusive waiter), and the woken slot's read is already linked to its poll.
    io_result got = co_await read_channel(w, ch, &s, std::span<const iovec>(s.iov, 2),
                                          EPOLLIN | EPOLLEXCLUSIVE);
    if (!check_read_result(w, got))
        co_return false;
    std::size_t n = got.bytes();
    if (n < header_size) {
        reject(w, "short message", nullptr, n);
        co_return false;
    }
    req = decode_header(std::span<const std::byte, header_size>(s.header, header_size));
    s.bad = {};
    s.landed = false;
    std::size_t expect = header_size + (req.carries_payload() ? req.len : 0);
    if (req.carries_payload() && req.len > max_payload_)
        s.bad = "length over the maximum payload";
    else if (n < expect && split_writes_ && req.type == DM_USER_REQ_MAP_WRITE &&
             n == header_size + read_size_)
        // The module splits a message only when it fills the read's buffer; a shorter
        // one is malformed, and waiting for its "rest" would wait for ever.
        co_return co_await read_rest(w, ch, s, req, n);
    else if (n < expect)
        s.bad = "message shorter than its header says";
    else if (n > expect)
        s.bad = "message longer than its header says";
    else if (req.carries_payload())
        req.payload = std::span<const std::byte>(s.buffer.get(), req.len);
    co_return true;
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
    if (req.carries_payload() && req.len > max_payload_) {
        // Consume the payload anyway so the stream stays in step.
        s.bad = "length over the maximum payload";
        std::uint64_t left = req.len;
        while (left > 0) {
            std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, s.capacity));
            if (!co_await read_fully(w, ch, s.buffer.get(), n))
                co_return false;
            left -= n;
        }
        co_return true;
    }
    if (req.len <= max_payload_ && (req.type == DM_USER_REQ_MAP_READ || req.carries_payload()))
        ensure_capacity(s, req.len);
    if (req.carries_payload()) {
        // The header came alone, so the payload may go straight to the store.
        std::byte* dest = landing_zone(s, req);
        if (!co_await read_fully(w, ch, dest ? dest : s.buffer.get(), req.len))
            co_return false;
        if (!s.landed)
            req.payload = std::span<const std::byte>(s.buffer.get(), req.len);
    }
    co_return true;
}

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

template <BlockStore S>
task<void> server<S>::watch_signals(worker& w, signal_relay& signals) {
    std::uint64_t seen = 0;
    for (;;) {
        io_result ready = co_await w.r->poll(signals.fd(), POLLIN);
        if (ready.res < 0)
            co_return; // cancelled when the ring shuts down
        const std::uint64_t came = signals.take();
        if (came == 0)
            continue;
        const char* name = strsignal(signal_relay::last_signal());
        if (seen == 0) {
            log::info("{}: {}: answering requests in flight, then stopping", source_.describe(),
                      name);
            request_stop(false);
        }
        seen += came;
        if (seen >= 2) {
            log::warn("{}: {} again: closing the channels; the module hands the requests they "
                      "hold to the next daemon",
                      source_.describe(), name);
            close_channels();
            co_return;
        }
    }
}

// The channels' files are closed (so the module requeues or fails what they hold) by
// putting /dev/null in their place: a response still on its way then goes nowhere,
// rather than to a file that reused the number.
template <BlockStore S>
void server<S>::close_channels() {
    unique_fd null_device(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!null_device) {
        log::error("{}: /dev/null: {}; the channels stay open", source_.describe(),
                   std::strerror(errno));
        return;
    }
    for (auto& ch : channels_)
        if (::dup3(null_device.get(), ch->fd.get(), O_CLOEXEC) < 0)
            log::error("{}: closing a channel: {}", source_.describe(), std::strerror(errno));
}

template <BlockStore S>
task<void> server<S>::give_up_after_deadline(worker& w) {
    io_result t = co_await w.r->timeout(opts_.stop_deadline);
    if (t.res != -ETIME || w.live == 0)
        co_return; // cancelled: everything was answered and the ring shut down
    log::error("{}: {} ms after the stop, the store still holds requests; giving up on them",
               source_.describe(), opts_.stop_deadline.count());
    {
        std::lock_guard lock(mutex_);
        failed_ = true;
    }
    w.gave_up = true;
}

template <BlockStore S>
task<void> server<S>::print_stats(worker& w) {
    for (;;) {
        io_result t = co_await w.r->timeout(opts_.stats_interval);
        if (t.res == -ECANCELED)
            co_return;
        log::info("{}: {}", source_.describe(), stats().to_string());
    }
}

} // namespace dmuser
