// dmuser/detail/server_lifecycle.hpp: a server's life: run() sets up the channels and the
// threads, each thread's ring and its per-thread store state, and the stop: signals, the stop
// deadline, closing the channels, the periodic stats.
#pragma once

#include "dmuser/server.hpp"

#include <cstring>
#include <fcntl.h>
#include <poll.h>

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
