// dmuser/server.hpp: the daemon. Opens C channels on T threads, each thread with its own
// ring; every request runs as its own coroutine and is answered with one write.
//
//   my_store store;
//   return dmuser::serve(store, {.name = "ctl", .threads = 2});
//
// On this project's module (Part 2, found with DM_USER_IOC_GET_INFO) each channel keeps
// `depth` whole-message reads outstanding, buffers sized once from max_payload. Every
// read is a readv into {the 40-byte header, a page-aligned payload}, and every response
// a writev of {header, data}, so what a store sees is page-aligned. On
// Android's module (ENOTTY) each channel serves one request at a time, header then
// payload, so there are channels x depth channels. run() returns after SIGINT/SIGTERM,
// stop(), or the target's removal (ENOTBLK), having answered every request it read.
//
// A store with write_view() gets large WRITEs with one copy instead of two: a read stops
// after `write_view_above` bytes of payload, and the rest is read straight into the
// store's memory. The rest comes with the channel's next read, so on Part 2 every slot
// then has a channel of its own (channels x depth channels, one read outstanding each).
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/channel_source.hpp"
#include "dmuser/detail/read_rules.hpp"
#include "dmuser/dispatch.hpp"
#include "dmuser/log.hpp"
#include "dmuser/protocol.hpp"
#include "dmuser/request_context.hpp"
#include "dmuser/ring.hpp"
#include "dmuser/signal_relay.hpp"
#include "dmuser/spawn.hpp"
#include "dmuser/stats.hpp"
#include "dmuser/task.hpp"
#include "dmuser/unique_fd.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace dmuser {

struct server_options {
    std::string name{};    // control name (or path) for serve(): /dev/dm-user/NAME
    unsigned threads = 1;  // threads, each with its own ring
    unsigned channels = 0; // channels opened, spread over the threads; 0 = one per thread
    unsigned depth = 32;   // requests in flight per channel (Part 2 modules)
    unsigned ring_entries = 256;
    // write_view stores: WRITEs with more payload than this land in the store's memory
    // (one more read each, one copy less); 0 = never.
    std::size_t write_view_above = 32u << 10;
    // Each thread spins this long for new requests before it sleeps (ring::set_busy_poll):
    // lower latency at low queue depth for a CPU kept busy meanwhile; 0 = sleep at once.
    std::chrono::microseconds busy_poll{0};
    std::uint64_t part1_max_payload = 16u << 20; // largest request accepted from Part 1
    bool requeue_on_close = true; // Part 2: a restarted daemon takes over unanswered requests
    bool io_flusher = true;       // PR_SET_IO_FLUSHER on every server thread
    bool lock_memory = false;     // mlockall(MCL_CURRENT | MCL_FUTURE)
    // SIGINT / SIGTERM stop the server, from whichever thread takes them (signal_relay.hpp);
    // a second one closes the channels, so the module hands what they hold to the next
    // daemon (with requeue_on_close). The previous handlers are back when run() returns.
    bool handle_signals = true;
    // After a stop, how long run() waits for the store to answer what it holds; then it
    // gives up on those requests (they are cancelled on the ring) and returns 1.
    std::chrono::milliseconds stop_deadline = std::chrono::seconds(30);
    std::chrono::milliseconds stats_interval{0}; // log stats this often; 0 = never
    // Called once, on a server thread, when every thread's channels are reading (ready()
    // turns true): to announce the device, or tell a supervisor. It must not block.
    std::function<void()> on_ready{};
    // Starts each server thread past the first (which is run()'s own); empty: std::thread.
    // For pinning or naming threads, and for tests that make a start fail.
    std::function<std::thread(std::function<void()>)> start_thread{};
};

namespace detail {
struct free_delete {
    void operator()(std::byte* p) const noexcept { std::free(p); }
};
using page_buffer = std::unique_ptr<std::byte[], free_delete>;
inline page_buffer allocate_pages(std::size_t bytes) {
    std::size_t rounded = (bytes + 4095) & ~std::size_t(4095);
    auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, rounded));
    if (!p)
        throw std::bad_alloc();
    return page_buffer(p);
}
} // namespace detail

template <BlockStore S>
class server {
public:
    server(S& store, channel_source& source, server_options opts = {})
        : store_(store), source_(source), opts_(std::move(opts)) {
        if (opts_.threads == 0)
            opts_.threads = 1;
        if (opts_.channels == 0)
            opts_.channels = opts_.threads;
        if (opts_.depth == 0)
            opts_.depth = 1;
    }
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    // Serves until stopped; 0 after a clean stop, 1 after a fatal error. Once per server:
    // a second call throws std::logic_error (its threads and channels are gone).
    int run();

    // Stop reading, answer what was read (for up to stop_deadline), return from run().
    // Thread-safe; not async-signal-safe (run() handles the signals itself).
    void stop() { request_stop(false); }

    server_stats stats() const {
        server_stats s;
        std::lock_guard lock(mutex_);
        for (auto& w : workers_)
            w->stats.add_to(s);
        return s;
    }
    const module_info& module() const { return module_; }
    std::uint64_t max_payload() const { return max_payload_; }
    // Channels open while ready(), else 0.
    std::size_t channels_open() const { return ready() ? channels_open_.load() : 0; }
    // True once every thread's ring is up and its channels are reading, until run() ends.
    bool ready() const { return !finished_.load() && ready_threads_.load() == opts_.threads; }

private:
    // A request's header and its payload are read apart (readv), so the payload (a
    // WRITE's data, a READ's answer) starts on a page, as O_DIRECT backing I/O needs.
    struct slot {
        alignas(64) std::byte header[header_size];
        detail::page_buffer buffer;     // the payload, page-aligned
        std::size_t capacity = 0;       // of buffer
        bool landed = false;            // the WRITE just read is already in the store
        std::uint64_t pending_read = 0; // io_op id of a read that may be cancelled
        // Reads left that go straight to a poll linked to the read: a slot whose read just
        // found nothing will likely find nothing next time too, and the failed read costs
        // a CQE and a turn of the loop. Now and then it tries a plain read again.
        unsigned poll_first_left = 0;
        iovec iov[2]{};
        std::string_view bad; // why the request just read is malformed (a literal), if it is
    };
    struct channel {
        unique_fd fd;
        std::vector<std::unique_ptr<slot>> slots;
        // Part 2 (DM_USER_FEATURE_POLL): no read waits in the kernel. It asks RWF_NOWAIT
        // (or, where the file refuses that, the fd is O_NONBLOCK); one that finds nothing
        // waits in an exclusive poll linked to the next read, so a new request wakes one
        // slot. Reads left waiting in the kernel instead are each polled by io_uring, and
        // every request woke them all; on 6.1 each that lost twice parked an io-wq thread
        // blocked in read().
        bool polled = false;
        int read_flags = 0; // RWF_NOWAIT, until the file refuses it
    };
    struct worker {
        ring* r = nullptr;            // this thread's ring, for its coroutines
        ring* mailbox = nullptr;      // the same while other threads may post to it (mutex_)
        bool stopping = false;        // no new reads
        bool reads_cancelled = false; // stop_worker has cancelled the waiting reads
        bool deadline_armed = false;
        bool gave_up = false; // the stop deadline passed with requests unanswered
        unsigned live = 0;    // slot loops still running
        unsigned index = 0;   // 0 .. threads - 1
        // When a stop gives up on the store's requests (request_info::deadline()).
        std::chrono::steady_clock::time_point give_up_at =
            std::chrono::steady_clock::time_point::max();
        std::vector<channel*> channels;
        thread_stats stats;
        // The store's state for this thread (request_context.hpp), alive from before the
        // first read until after the ring has ended every request.
        [[no_unique_address]] std::conditional_t<std::is_void_v<thread_state_t<S>>, std::monostate,
                                                 std::optional<thread_state_t<S>>>
            state;
    };

    void request_stop(bool failed) {
        std::lock_guard lock(mutex_);
        if (failed)
            failed_ = true;
        stop_requested_ = true;
        for (auto& w : workers_)
            if (w->mailbox) {
                worker* wp = w.get();
                w->mailbox->post([this, wp] { stop_worker(*wp); });
            }
    }
    // On the worker's thread: no new reads; cancel the ones waiting for a request. A read
    // that met end of file or an error has already set `stopping`, so only the cancelling
    // is done once: the worker's other reads would otherwise wait for ever.
    void stop_worker(worker& w) {
        arm_stop_deadline(w);
        w.stopping = true;
        if (std::exchange(w.reads_cancelled, true))
            return;
        for (channel* ch : w.channels)
            for (auto& s : ch->slots)
                if (s->pending_read)
                    w.r->request_cancel(s->pending_read);
    }
    void target_gone(std::string_view why) {
        if (!target_gone_.exchange(true))
            log::info("{}: {}; stopping", source_.describe(), why);
        request_stop(false);
    }
    void fatal(std::string_view what, std::error_code ec) {
        log::error("{}: {}: {}", source_.describe(), what, ec.message());
        request_stop(true);
    }

    void arm_stop_deadline(worker& w) {
        if (w.deadline_armed || opts_.stop_deadline.count() <= 0)
            return;
        w.deadline_armed = true;
        w.give_up_at = std::chrono::steady_clock::now() + opts_.stop_deadline;
        spawn(give_up_after_deadline(w), "stop deadline");
    }
    void close_channels();

    void thread_main(unsigned index, signal_relay* signals);
    void open_thread_state(worker& w);
    context_for<S> make_context(worker& w);
    task<void> slot_loop(worker& w, channel& ch, slot& s);
    enum class took { nothing, request, part_of_write };
    std::span<const iovec> whole_message_iov(slot& s);
    took take_whole(worker& w, slot& s, request& req, io_result got);
    task<bool> read_stream(worker& w, channel& ch, slot& s, request& req);
    task<io_result> read_channel(worker& w, channel& ch, slot* s, std::span<const iovec> iov,
                                 unsigned events);
    // One try of read_channel's: the read, and the slot's record of it (pending_read).
    struct channel_read {
        polled_read_op op;
        std::uint64_t* pending; // the slot's pending_read, or null
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> waiter) {
            if (pending)
                *pending = op.id();
            op.await_suspend(waiter);
        }
        io_result await_resume() const noexcept {
            if (pending)
                *pending = 0;
            return op.await_resume();
        }
    };
    bool first_read_polls(worker& w, channel& ch, slot* s);
    channel_read read_once(worker& w, channel& ch, slot* s, std::span<const iovec> iov,
                           unsigned events, bool poll_first);
    bool read_again(worker& w, channel& ch, slot* s, io_result got, bool& poll_first);
    task<bool> read_fully(worker& w, channel& ch, std::byte* at, std::size_t n);
    bool nowait_refused(channel& ch, io_result got);
    task<bool> read_rest(worker& w, channel& ch, slot& s, request& req, std::size_t have);
    std::byte* landing_zone(slot& s, const request& req);
    int prepare_response(slot& s, const request& req, const reply& rep, std::size_t& bytes);
    io_op write_response(worker& w, channel& ch, const iovec* iov, int count);
    task<bool> send(worker& w, channel& ch, slot& s, const request& req, io_result got, int count,
                    std::size_t left);
    task<void> watch_signals(worker& w, signal_relay& signals);
    task<void> give_up_after_deadline(worker& w);
    task<void> print_stats(worker& w);
    bool check_read_result(worker& w, io_result got);
    void ensure_capacity(slot& s, std::size_t bytes);
    void reject(worker& w, std::string_view why, const request* req, std::size_t message_bytes = 0);

    S& store_;
    channel_source& source_;
    server_options opts_;
    module_info module_;
    bool whole_messages_ = false;
    bool split_writes_ = false; // whole-message reads stop early for write_view
    std::size_t read_size_ = 0; // payload bytes asked of each whole-message read
    std::uint64_t max_payload_ = 0;
    std::uint64_t store_size_ = 0;
    std::vector<std::unique_ptr<channel>> channels_;

    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<worker>> workers_;
    bool stop_requested_ = false;
    bool failed_ = false;
    std::atomic<bool> target_gone_{false};
    std::atomic<unsigned> ready_threads_{0};
    std::atomic<bool> started_{false};
    std::atomic<bool> finished_{false};
    std::atomic<std::size_t> channels_open_{0}; // read by other threads, unlike channels_
    std::atomic<bool> io_flusher_warned_{false};
};

// Serves `store` on /dev/dm-user/<opts.name>; returns the process exit status.
template <BlockStore S>
int serve(S& store, server_options opts) {
    try {
        device_channels source(opts.name);
        server<S> s(store, source, std::move(opts));
        return s.run();
    } catch (const std::exception& e) {
        log::error("{}", e.what());
        return 1;
    }
}

} // namespace dmuser

#include "dmuser/detail/server_impl.hpp"
