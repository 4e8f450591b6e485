// dmuser/ring.hpp: the reactor. One ring per thread drives every coroutine of that thread
// over io_uring: operations are awaitables, their SQEs are batched into one io_uring_enter
// per loop turn, and each CQE's user_data names the operation that awaits it: its address
// and a generation (see completion).
#pragma once

#include "dmuser/log.hpp"
#include "dmuser/task.hpp"
#include "dmuser/unique_fd.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <liburing.h>
#include <mutex>
#include <poll.h>
#include <span>
#include <stdexcept>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace dmuser {

class ring;

namespace detail {
// ThreadSanitizer cannot see the order the kernel gives io_uring operations: a write
// submitted on one thread that completes before another thread's read returns its
// bytes. So under TSan every submission releases, and every reaped completion acquires,
// one token: I/O through any ring orders the memory of the threads doing it.
#if defined(__SANITIZE_THREAD__)
inline char io_order_token;
inline void io_release() noexcept {
    __tsan_release(&io_order_token);
}
inline void io_acquire() noexcept {
    __tsan_acquire(&io_order_token);
}
#else
inline void io_release() noexcept {}
inline void io_acquire() noexcept {}
#endif
} // namespace detail

namespace testing {
// Fault injection for tests (tests/fuzz/fuzz_server.cpp): when set, every operation a
// ring is about to hand to the kernel is shown to it first; a negative return completes
// the operation with that -errno instead, as if the kernel had failed it, and 0 lets it
// through. It is called on the ring's thread, so it must be thread-safe. Process-wide;
// returns the previous one so a test can restore it. Unset, it costs one relaxed load
// per submission.
using fault_injector = int (*)(const io_uring_sqe& op) noexcept;
namespace detail {
inline std::atomic<fault_injector> injector{nullptr};
} // namespace detail
inline fault_injector set_fault_injector(fault_injector fn) noexcept {
    return detail::injector.exchange(fn);
}
} // namespace testing

// The outcome of one operation: res as io_uring reports it (bytes, or -errno).
struct io_result {
    int res = 0;
    bool ok() const noexcept { return res >= 0; }
    std::size_t bytes() const noexcept { return res > 0 ? static_cast<std::size_t>(res) : 0; }
    std::error_code error() const noexcept {
        return res < 0 ? std::error_code(-res, std::system_category()) : std::error_code{};
    }
};

// Stable state of an operation in flight. It must stay alive (and so must the buffers it
// names) until its CQE has been reaped.
//
// A CQE's user_data (and so an operation's id, the key of ring::cancel) is the address of
// its completion with `generation` in the pointer's spare high bits. The address alone is
// not a name: when an operation ends, the next one is often made at the same address (the
// same local in a loop, a recycled coroutine frame), and a cancel by the old address would
// hit it. Each io_op takes a new generation from its ring, so a stale id misses (until the
// generation wraps at the same address).
struct completion {
    using callback = void (*)(completion*) noexcept;
    callback on_complete = nullptr;
    int res = 0;
    unsigned cqe_flags = 0;
    completion* next_ready = nullptr;
    std::uint16_t generation = 0;
};

namespace detail {
// User-space addresses fit in 48 bits on x86-64 (4-level paging; 5-level paging hands out
// higher addresses only to an mmap that asks for them) and on AArch64. AArch64 may keep a
// tag in the top byte (Top Byte Ignore: Android's heap, HWASan, MTE), which must survive,
// so there the generation has only bits 48-55.
inline constexpr unsigned generation_shift = 48;
#if defined(__x86_64__)
inline constexpr unsigned generation_bits = 16;
#else
inline constexpr unsigned generation_bits = 8;
#endif
inline constexpr std::uint64_t generation_mask = ((std::uint64_t{1} << generation_bits) - 1)
                                                 << generation_shift;

// The user_data for `c`: its address and generation. Throws std::logic_error if the
// address uses the generation's bits (a platform this scheme does not fit).
inline std::uint64_t user_data_of(const completion& c) {
    const auto address = reinterpret_cast<std::uintptr_t>(&c);
    if (address & generation_mask) [[unlikely]]
        throw std::logic_error("dmuser::ring: an operation's address uses the bits its "
                               "generation needs");
    return address | (std::uint64_t{c.generation} << generation_shift);
}
inline completion* completion_of(std::uint64_t user_data) noexcept {
    return reinterpret_cast<completion*>(static_cast<std::uintptr_t>(user_data & ~generation_mask));
}
inline std::uint16_t generation_of(std::uint64_t user_data) noexcept {
    return static_cast<std::uint16_t>((user_data & generation_mask) >> generation_shift);
}
} // namespace detail

// An awaitable io_uring operation: `io_result r = co_await ring.read(fd, buf, off);`.
// It is neither copyable nor movable, so the address the kernel holds stays valid; create
// it in the co_await expression (or as a local you await once). The SQE is only taken
// when the coroutine suspends, so an operation never awaited submits nothing.
class [[nodiscard]] io_op : public completion {
public:
    template <typename Prepare>
    io_op(ring& r, Prepare&& prepare) noexcept;
    io_op(const io_op&) = delete;
    io_op& operator=(const io_op&) = delete;

    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> waiter);
    io_result await_resume() const noexcept { return io_result{res}; }

    // Key for ring::cancel: the user_data of this operation, unique among the operations
    // of its ring that are alive at the same time as it or shortly after.
    std::uint64_t id() const { return detail::user_data_of(*this); }

private:
    friend class ring; // fills timespec_ for timeouts

    static void resume_waiter(completion* c) noexcept { static_cast<io_op*>(c)->waiter_.resume(); }

    ring* ring_;
    io_uring_sqe sqe_;
    std::coroutine_handle<> waiter_;
    __kernel_timespec timespec_{}; // for timeouts: the kernel reads it after submission
};

// A poll of fd and, once it fires, a read of it, as one submission (IOSQE_IO_LINK): a
// thread that waits for data wakes up to a read that has already run. Made by
// ring::readv_when_ready; neither copyable nor movable, like io_op. Its result is the
// read's, or the poll's failure (-ECANCELED when cancelled: the read is then not done).
// Where the kernel can (IORING_FEAT_CQE_SKIP), a poll that fires posts no CQE and a poll
// that fails takes its read's with it, so the pair costs one CQE; otherwise it resumes
// only once both CQEs are in, so neither lands in a frame that is gone.
// Made with poll_first false (ring::readv_polled_if), it is the read alone: one awaitable
// type for a loop that polls only after a read has found nothing.
class [[nodiscard]] polled_read_op {
public:
    template <typename PreparePoll, typename PrepareRead>
    polled_read_op(ring& r, PreparePoll&& prepare_poll, PrepareRead&& prepare_read,
                   bool poll_first = true) noexcept;
    polled_read_op(const polled_read_op&) = delete;
    polled_read_op& operator=(const polled_read_op&) = delete;

    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> waiter);
    io_result await_resume() const noexcept {
        return io_result{poll_.res < 0 ? poll_.res : read_.res};
    }

    // Key for ring::cancel: the poll (a linked read that has not started cannot be
    // cancelled by itself; once the poll has fired, the read is under way), or the read
    // when it was made without a poll.
    std::uint64_t id() const { return detail::user_data_of(poll_first_ ? poll_ : read_); }

private:
    struct part : completion {
        polled_read_op* owner = nullptr;
    };
    static void part_done(completion* c) noexcept {
        polled_read_op* self = static_cast<part*>(c)->owner;
        if (--self->parts_left_ == 0)
            self->waiter_.resume();
    }

    ring* ring_;
    part poll_;
    part read_;
    unsigned parts_left_ = 0; // CQEs still to come, set when submitted
    bool poll_first_ = true;
    io_uring_sqe poll_sqe_;
    io_uring_sqe read_sqe_;
    std::coroutine_handle<> waiter_;
};

class ring {
public:
    // entries: SQ size; cq_entries: CQ size, enough for every operation that may be in
    // flight at once (0: 4 x entries), so bursts of completions never overflow.
    explicit ring(unsigned entries = 256, unsigned cq_entries = 0) {
        io_uring_params p{};
        // Newest flags first; older kernels (5.x) reject them and get the next set.
        const unsigned flag_sets[] = {
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
            IORING_SETUP_COOP_TASKRUN,
            0,
        };
        int r = -EINVAL;
        for (unsigned flags : flag_sets) {
            p = {};
            p.flags = flags | IORING_SETUP_CQSIZE;
            p.cq_entries = cq_entries ? cq_entries : entries * 4;
            r = io_uring_queue_init_params(entries, &ring_, &p);
            if (r != -EINVAL)
                break;
        }
        if (r < 0)
            throw std::system_error(-r, std::system_category(), "io_uring_queue_init");
        // liburing maps the rings with raw syscalls, which TSan does not see: a ring made
        // where another thread's ring was unmapped would look like a race with that thread.
        // The kernel orders the unmap before this map; say so (~ring releases).
        detail::io_acquire();
        skip_cqe_ = (p.features & IORING_FEAT_CQE_SKIP) != 0;
        int efd = ::eventfd(0, EFD_CLOEXEC);
        if (efd < 0) {
            io_uring_queue_exit(&ring_);
            throw std::system_error(errno, std::system_category(), "eventfd");
        }
        wake_fd_.reset(efd);
        previous_ = current_ref();
        current_ref() = this;
        wake_.on_complete = &on_wake;
        wake_.owner = this;
        arm_wake();
    }
    ring(const ring&) = delete;
    ring& operator=(const ring&) = delete;

    // Closes: cancels what is still in flight and waits for its CQEs, so no buffer is
    // written after its owner is gone, then closes the ring. Bounded (see shut_down()),
    // except that it waits for the hand-offs announced (expect_hand_off): another thread
    // still holds their frames.
    ~ring() {
        shut_down();
        await_hand_offs();
        detail::io_release(); // before the unmap: a ring mapped there next acquires it
        io_uring_queue_exit(&ring_);
        // Unlink from this thread's chain of rings wherever we are in it: rings need not
        // be destroyed in the reverse order of their making.
        for (ring** link = &current_ref(); *link; link = &(*link)->previous_)
            if (*link == this) {
                *link = previous_;
                break;
            }
    }

    // The ring of the calling thread (the last one constructed on it that is still
    // alive), or nullptr.
    static ring* current() noexcept { return current_ref(); }

    // --- operations -------------------------------------------------------------------
    io_op read(int fd, std::span<std::byte> buf, std::uint64_t offset) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) {
            io_uring_prep_read(s, fd, buf.data(), clamp(buf.size()), offset);
        });
    }
    io_op write(int fd, std::span<const std::byte> buf, std::uint64_t offset) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) {
            io_uring_prep_write(s, fd, buf.data(), clamp(buf.size()), offset);
        });
    }
    // The iovec array (not only the buffers) must stay alive until the op completes.
    // rw_flags: RWF_* (RWF_NOWAIT: -EAGAIN instead of waiting for data).
    io_op readv(int fd, std::span<const iovec> iov, std::uint64_t offset, int rw_flags = 0) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) {
            io_uring_prep_readv2(s, fd, iov.data(), static_cast<unsigned>(iov.size()), offset,
                                 rw_flags);
        });
    }
    // poll(fd, events), and when it fires readv(fd, iov, offset, rw_flags), linked: one
    // submission, and the read runs as the poll fires, without a turn of this loop.
    // With EPOLLEXCLUSIVE in events, a wake_up() of fd's wait queue wakes one such poll
    // rather than all of them. The iovec array must stay alive until the op completes.
    polled_read_op readv_when_ready(int fd, unsigned events, std::span<const iovec> iov,
                                    std::uint64_t offset, int rw_flags = 0) {
        return readv_polled_if(true, fd, events, iov, offset, rw_flags);
    }
    // readv_when_ready if poll_first, else the readv at once (the same awaitable type).
    polled_read_op readv_polled_if(bool poll_first, int fd, unsigned events,
                                   std::span<const iovec> iov, std::uint64_t offset,
                                   int rw_flags = 0) {
        return polled_read_op(
            *this, [&](io_uring_sqe* s) { io_uring_prep_poll_add(s, fd, events); },
            [&](io_uring_sqe* s) {
                io_uring_prep_readv2(s, fd, iov.data(), static_cast<unsigned>(iov.size()), offset,
                                     rw_flags);
            },
            poll_first);
    }
    io_op writev(int fd, std::span<const iovec> iov, std::uint64_t offset) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) {
            io_uring_prep_writev(s, fd, iov.data(), static_cast<unsigned>(iov.size()), offset);
        });
    }
    io_op fsync(int fd) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) { io_uring_prep_fsync(s, fd, 0); });
    }
    io_op fdatasync(int fd) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) {
            io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
        });
    }
    io_op fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t len) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) {
            io_uring_prep_fallocate(s, fd, mode, offset, len);
        });
    }
    // Completes with the ready events (POLLIN...) once fd has one of `events`.
    io_op poll(int fd, unsigned events) {
        return io_op(*this,
                     [&](io_uring_sqe* s, io_op*) { io_uring_prep_poll_add(s, fd, events); });
    }
    // Completes after `d` with res -ETIME (or -ECANCELED if cancelled first).
    io_op timeout(std::chrono::nanoseconds d) {
        return io_op(*this, [&](io_uring_sqe* s, io_op* self) {
            auto& ts = timespec_of(*self);
            ts.tv_sec = d.count() / 1'000'000'000;
            ts.tv_nsec = d.count() % 1'000'000'000;
            io_uring_prep_timeout(s, &ts, 0, 0);
        });
    }
    // Cancels one operation in flight (by io_op::id()); it completes with -ECANCELED
    // unless it already finished. res: 0, -ENOENT (not found) or -EALREADY.
    io_op cancel(std::uint64_t op_id) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) { io_uring_prep_cancel64(s, op_id, 0); });
    }
    // Cancels every operation in flight on fd; res: how many, or -ENOENT.
    io_op cancel_fd(int fd) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) {
            io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL);
        });
    }

    // Fire-and-forget cancellation, for code that is not a coroutine (e.g. a posted
    // function): the cancelled operation still completes through its own CQE.
    void request_cancel(std::uint64_t op_id) {
        io_uring_sqe* s = get_sqe();
        io_uring_prep_cancel64(s, op_id, 0);
        io_uring_sqe_set_data(s, nullptr);
    }

    // --- driving ----------------------------------------------------------------------
    // One turn: submit what is queued (waiting for a completion if nothing is ready),
    // reap every CQE, resume every operation that completed.
    void run_once(bool wait = true) {
        check_owner("run");
        int r = (wait && !ready_head_) ? wait_for_events() : io_uring_submit_and_get_events(&ring_);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME)
            throw std::system_error(-r, std::system_category(), "io_uring_enter");
        reap();
        run_ready();
    }
    // Busy polling: before sleeping for a completion, keep collecting events for up to
    // `budget`. Sleeping costs a context switch and, when the next request comes, a
    // wake-up across CPUs; while requests come densely, one spin is cheaper. 0: off.
    void set_busy_poll(std::chrono::microseconds budget) noexcept { busy_poll_ = budget; }

    // Runs until stop() is called on this thread (or via post() from another).
    void run() {
        stopped_ = false;
        while (!stopped_)
            run_once(true);
    }
    // Runs until `t` completes and returns its result (or rethrows its exception).
    template <typename T>
    T run(task<T> t) {
        if (!t.valid())
            throw std::invalid_argument("ring::run: empty task");
        auto h = t.handle();
        task<T>::claim(h);
        if (!h.done()) {
            h.promise().continuation = std::noop_coroutine();
            h.resume();
        }
        try {
            while (!h.done())
                run_once(true);
        } catch (...) {
            // t may be suspended on an operation the kernel still holds: freeing its frame
            // here would let that CQE land in freed memory. It is handed to an owner that
            // frees it once it ends (at the latest when this ring shuts down).
            if (!h.done())
                release_when_done(std::move(t));
            throw;
        }
        return h.promise().take();
    }
    void stop() noexcept { stopped_ = true; }
    bool stopped() const noexcept { return stopped_; }

    // Runs fn on this ring's thread during a later turn; callable from any thread.
    void post(std::function<void()> fn) {
        {
            std::lock_guard lock(posted_mutex_);
            posted_.push_back(std::move(fn));
        }
        std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
    }

    // --- completions from other threads --------------------------------------------
    // For awaitables that another thread completes (remote_completion.hpp,
    // thread_pool.hpp, the async locks). On this ring's thread, before the awaiting
    // coroutine can be handed back, announce that it will be: expect_hand_off(). Then, from
    // any thread, hand_off(c) makes c ready here: its on_complete runs on this ring's thread
    // in a later turn. No allocation; at most one eventfd write per burst of hand-offs. The
    // ring's destruction waits for every hand-off announced, since the threads that will
    // make them still name the awaiting frames.
    void expect_hand_off() noexcept { ++hand_offs_expected_; }
    // Withdraws an announcement whose hand-off will not come (the work ended first).
    void hand_off_not_coming() noexcept { --hand_offs_expected_; }
    void hand_off(completion& c) noexcept {
        if (current() == this) {
            --hand_offs_expected_;
            make_ready(c);
            return;
        }
        // The ring may finish its destruction once it has taken c; it waits while a
        // hand-off is between publishing c and waking it.
        hand_offs_posting_.fetch_add(1, std::memory_order_seq_cst);
        completion* head = handed_off_.load(std::memory_order_relaxed);
        do
            c.next_ready = head;
        while (!handed_off_.compare_exchange_weak(head, &c, std::memory_order_release,
                                                  std::memory_order_relaxed));
        if (!head) {
            // The list was empty, so no wake-up is on its way yet.
            std::uint64_t one = 1;
            [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
        }
        hand_offs_posting_.fetch_sub(1, std::memory_order_seq_cst);
    }

    // Operations whose CQE has not been reaped (including the ring's own wake-up read).
    unsigned in_flight() const noexcept { return in_flight_; }
    io_uring* native() noexcept { return &ring_; }

    // For custom operations: queue a copy of `prepared` whose CQE completes `c`.
    // Once the ring is closing, nothing more reaches the kernel: `c` completes with
    // -ECANCELED in a later turn, so a coroutine that retries after a cancellation cannot
    // keep the shutdown going (see shut_down()).
    void submit(completion& c, const io_uring_sqe& prepared) {
        if (closing_) {
            c.res = -ECANCELED;
            c.cqe_flags = 0;
            make_ready(c);
            return;
        }
        if (auto inject = testing::detail::injector.load(std::memory_order_relaxed))
            if (int res = inject(prepared); res < 0) {
                c.res = res;
                c.cqe_flags = 0;
                make_ready(c);
                return;
            }
        const std::uint64_t user_data = detail::user_data_of(c);
        io_uring_sqe* s = get_sqe();
        *s = prepared;
        io_uring_sqe_set_data64(s, user_data);
        ++in_flight_;
        detail::io_release();
    }

    // Two operations, the second started only once the first succeeded (IOSQE_IO_LINK;
    // a failed first fails the second with -ECANCELED). Each CQE completes its own.
    // quiet_first: where the kernel can, the first posts no CQE when it succeeds, and a
    // failed first takes the second's CQE with it (IOSQE_CQE_SKIP_SUCCESS): exactly one
    // of the two then completes. Returns how many of them will complete: 1 or 2.
    unsigned submit_linked(completion& first, const io_uring_sqe& first_prepared,
                           completion& second, const io_uring_sqe& second_prepared,
                           bool quiet_first = false) {
        const bool quiet = quiet_first && skip_cqe_;
        // The pair failed before reaching the kernel: as the kernel would fail it.
        auto fail_first = [&](int res) {
            first.res = res;
            first.cqe_flags = 0;
            make_ready(first);
            if (quiet)
                return 1u;
            second.res = -ECANCELED;
            second.cqe_flags = 0;
            make_ready(second);
            return 2u;
        };
        if (closing_)
            return fail_first(-ECANCELED);
        // An injected failure of either fails the pair as the kernel would a failed first.
        if (auto inject = testing::detail::injector.load(std::memory_order_relaxed))
            for (const io_uring_sqe* prepared : {&first_prepared, &second_prepared})
                if (int res = inject(*prepared); res < 0)
                    return fail_first(res);
        // Both in one submission: a link cut by a flush between them would start the
        // second at once.
        while (io_uring_sq_space_left(&ring_) < 2)
            flush_submissions();
        const std::uint64_t first_data = detail::user_data_of(first);
        const std::uint64_t second_data = detail::user_data_of(second);
        io_uring_sqe* s = get_sqe();
        *s = first_prepared;
        s->flags |= IOSQE_IO_LINK | (quiet ? IOSQE_CQE_SKIP_SUCCESS : 0);
        io_uring_sqe_set_data64(s, first_data);
        s = get_sqe();
        *s = second_prepared;
        io_uring_sqe_set_data64(s, second_data);
        const unsigned cqes = quiet ? 1 : 2;
        in_flight_ += cqes;
        detail::io_release();
        return cqes;
    }

    // A free SQE; a full SQ is flushed to the kernel and retried.
    io_uring_sqe* get_sqe() {
        for (;;) {
            if (io_uring_sqe* s = io_uring_get_sqe(&ring_))
                return s;
            flush_submissions();
        }
    }

    // Hands the queued SQEs to the kernel to make room in the SQ. If the kernel pushes
    // back, completions are reaped into the ready list (without resuming anyone) instead.
    void flush_submissions() {
        check_owner("submit to");
        int r = io_uring_submit(&ring_);
        if (r == -EBUSY || r == -EAGAIN)
            reap();
        else if (r < 0 && r != -EINTR)
            throw std::system_error(-r, std::system_category(), "io_uring_submit");
    }

    // A generation for the next io_op (see completion).
    std::uint16_t next_generation() noexcept {
        return static_cast<std::uint16_t>(++generation_ &
                                          (detail::generation_mask >> detail::generation_shift));
    }

private:
    // io_uring_enter only from the thread that made the ring: the kernel enforces it for a
    // SINGLE_ISSUER ring (EEXIST), and on any ring the SQ and CQ are not thread-safe. Debug
    // builds say so clearly, on every kernel; the check is a thread id comparison per turn.
    void check_owner([[maybe_unused]] const char* what) const {
#ifndef NDEBUG
        if (std::this_thread::get_id() != owner_) [[unlikely]]
            throw std::logic_error(fmt::format(
                "dmuser::ring: cannot {} a ring from a thread other than the one that made it "
                "(use post())",
                what));
#endif
    }

    int wait_for_events() {
        if (busy_poll_.count() > 0 && !io_uring_cq_ready(&ring_)) {
            const auto until = std::chrono::steady_clock::now() + busy_poll_;
            // Each turn enters the kernel, which runs the ring's deferred task work (a
            // poll that fired retries its read there). The clock is read every 16 turns:
            // it can cost as much as a turn.
            for (unsigned turn = 1;; ++turn) {
                int r = io_uring_submit_and_get_events(&ring_);
                if (r < 0 || io_uring_cq_ready(&ring_))
                    return r;
                if (turn % 16 == 0 && std::chrono::steady_clock::now() >= until)
                    break;
            }
        }
        return io_uring_submit_and_wait(&ring_, 1);
    }

    static ring*& current_ref() noexcept {
        thread_local ring* current = nullptr;
        return current;
    }
    static __kernel_timespec& timespec_of(io_op& op) noexcept {
        return op.timespec_;
    }
    static unsigned clamp(std::size_t n) noexcept {
        return n > 0x7ffff000u ? 0x7ffff000u : static_cast<unsigned>(n);
    }

    void reap() noexcept {
        io_uring_cqe* cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring_, head, cqe) {
            ++seen;
            const std::uint64_t user_data = io_uring_cqe_get_data64(cqe);
            completion* c = detail::completion_of(user_data);
            if (!c)
                continue; // the ring's own cancel requests carry no state
            if (c == &probe_) {
                probe_.res = cqe->res;
                probe_done_ = true;
                continue;
            }
            --in_flight_;
            if (detail::generation_of(user_data) != c->generation) [[unlikely]] {
                // Not the operation that now lives at this address: its owner broke the
                // rule that an operation outlives its CQE. Resuming whatever is there now
                // would resume the wrong coroutine.
                log::error("dmuser::ring: dropped a CQE (res {}) for an operation that no "
                           "longer exists",
                           cqe->res);
                continue;
            }
            c->res = cqe->res;
            c->cqe_flags = cqe->flags;
            make_ready(*c);
        }
        io_uring_cq_advance(&ring_, seen);
        if (seen)
            detail::io_acquire();
    }
    void make_ready(completion& c) noexcept {
        c.next_ready = nullptr;
        if (ready_tail_)
            ready_tail_->next_ready = &c;
        else
            ready_head_ = &c;
        ready_tail_ = &c;
    }
    // Resumes what is ready now; what becomes ready meanwhile waits for the next turn, so
    // one turn is bounded even when a resumed coroutine at once completes another op.
    void run_ready() noexcept {
        completion* c = std::exchange(ready_head_, nullptr);
        ready_tail_ = nullptr;
        while (c) {
            completion* next = c->next_ready;
            c->on_complete(c);
            c = next;
        }
    }

    // The bounded shutdown of ~ring. From here on submit() refuses new work, so only what
    // the kernel already holds can keep us waiting: each round asks the kernel to cancel
    // everything and waits for that request's answer, then resumes what completed. It
    // ends when nothing is in flight and nothing ready, or
    //  - when the kernel twice in a row finds nothing to cancel and no CQE came: the
    //    CQEs still counted in flight will never come (dropped on CQ overflow, or an SQE
    //    that asked for none), so there is nothing left to wait for;
    //  - after `max_idle_rounds` rounds with nothing in flight: what is still ready then
    //    are coroutines that retry, refused, forever; they are left suspended;
    //  - if io_uring_enter fails for good: the kernel cancels on io_uring_queue_exit.
    void shut_down() noexcept {
        closing_ = true;
        constexpr unsigned max_idle_rounds = 64;
        unsigned idle_rounds = 0, found_nothing = 0;
        while (in_flight_ > 0 || ready_head_) {
            take_hand_offs();
            if (in_flight_ == 0) {
                if (++idle_rounds > max_idle_rounds)
                    return;
                run_ready();
                continue;
            }
            // Only reaping lowers in_flight_ now that submit() refuses new work.
            const unsigned before = in_flight_;
            if (!probe_cancel_all())
                return;
            // With CANCEL_ALL the answer is how many were found: 0 (or, on some
            // kernels, -ENOENT) is none.
            if ((probe_.res == 0 || probe_.res == -ENOENT) && in_flight_ == before) {
                if (++found_nothing >= 2)
                    return;
            } else {
                found_nothing = 0;
            }
            run_ready();
        }
    }
    // Submits a cancellation of everything in flight and waits for its own CQE (reaping
    // the others as they come; the probe is not counted in in_flight_). False if the ring cannot be
    // entered.
    bool probe_cancel_all() noexcept {
        io_uring_sqe* s = io_uring_get_sqe(&ring_);
        if (!s) {
            if (io_uring_submit(&ring_) < 0 || !(s = io_uring_get_sqe(&ring_)))
                return false;
        }
        io_uring_prep_cancel64(s, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data(s, &probe_);
        probe_done_ = false;
        while (!probe_done_) {
            int r = io_uring_submit_and_wait(&ring_, 1);
            if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME)
                return false;
            reap();
        }
        return true;
    }
    void arm_wake() {
        io_uring_sqe prepared{};
        io_uring_prep_read(&prepared, wake_fd_.get(), &wake_count_, sizeof wake_count_, 0);
        submit(wake_, prepared);
    }
    // Makes ready, in the order they came, the completions other threads handed off.
    void take_hand_offs() noexcept {
        completion* c = handed_off_.exchange(nullptr, std::memory_order_acquire);
        completion* in_order = nullptr;
        while (c) {
            completion* next = c->next_ready;
            c->next_ready = in_order;
            in_order = c;
            c = next;
        }
        while (in_order) {
            completion* next = in_order->next_ready;
            --hand_offs_expected_;
            make_ready(*in_order);
            in_order = next;
        }
    }
    // The end of shut_down: waits for every hand-off announced (and for each hand_off()
    // call to be done with this ring), resuming the coroutines they complete. The wake-up
    // read is no longer armed, so the eventfd is polled directly.
    void await_hand_offs() noexcept {
        auto since = std::chrono::steady_clock::now();
        while (hand_offs_expected_ > 0) {
            take_hand_offs();
            run_ready();
            if (hand_offs_expected_ == 0)
                break;
            pollfd p{wake_fd_.get(), POLLIN, 0};
            if (::poll(&p, 1, 100) > 0) {
                std::uint64_t count;
                [[maybe_unused]] auto n = ::read(wake_fd_.get(), &count, sizeof count);
            }
            if (std::chrono::steady_clock::now() - since > std::chrono::seconds(10)) {
                log::warn("dmuser::ring: closing, still waiting for {} completions from other "
                          "threads",
                          hand_offs_expected_);
                since = std::chrono::steady_clock::now();
            }
        }
        while (hand_offs_posting_.load(std::memory_order_seq_cst) > 0)
            std::this_thread::yield();
    }

    static void on_wake(completion* c) noexcept {
        ring* self = static_cast<wake_completion*>(c)->owner;
        self->take_hand_offs();
        std::vector<std::function<void()>> work;
        {
            std::lock_guard lock(self->posted_mutex_);
            work.swap(self->posted_);
        }
        for (auto& fn : work) {
            try {
                fn();
            } catch (...) {
                // A posted function must not kill the loop; it is the poster's to report.
            }
        }
        if (!self->closing_) {
            try {
                self->arm_wake();
            } catch (...) {
            }
        }
    }

    template <typename T>
    static void release_when_done(task<T> t);

    io_uring ring_{};
    unsigned in_flight_ = 0;
    completion* ready_head_ = nullptr;
    completion* ready_tail_ = nullptr;
    bool stopped_ = false;
    bool closing_ = false;
    bool skip_cqe_ = false; // the kernel honours IOSQE_CQE_SKIP_SUCCESS (5.17)
    ring* previous_ = nullptr;
    completion probe_; // shut_down's cancel-everything request
    bool probe_done_ = false;
    std::uint16_t generation_ = 0;
#ifndef NDEBUG
    std::thread::id owner_ = std::this_thread::get_id(); // the thread that made the ring
#endif

    struct wake_completion : completion {
        ring* owner = nullptr;
    };
    unique_fd wake_fd_;
    std::chrono::microseconds busy_poll_{0};
    wake_completion wake_;
    std::uint64_t wake_count_ = 0;
    std::mutex posted_mutex_;
    std::vector<std::function<void()>> posted_;
    // hand_off(): a stack other threads push onto (linked by next_ready), taken whole.
    std::atomic<completion*> handed_off_{nullptr};
    std::atomic<unsigned> hand_offs_posting_{0};
    unsigned hand_offs_expected_ = 0;
};

template <typename Prepare>
io_op::io_op(ring& r, Prepare&& prepare) noexcept : ring_(&r) {
    on_complete = &resume_waiter;
    generation = r.next_generation();
    sqe_ = {};
    prepare(&sqe_, this);
}

inline void io_op::await_suspend(std::coroutine_handle<> waiter) {
    waiter_ = waiter;
    ring_->submit(*this, sqe_);
}

template <typename PreparePoll, typename PrepareRead>
polled_read_op::polled_read_op(ring& r, PreparePoll&& prepare_poll, PrepareRead&& prepare_read,
                               bool poll_first) noexcept
    : ring_(&r), poll_first_(poll_first) {
    read_.owner = this;
    read_.on_complete = &part_done;
    read_.generation = r.next_generation();
    read_sqe_ = {};
    prepare_read(&read_sqe_);
    if (poll_first) {
        poll_.owner = this;
        poll_.on_complete = &part_done;
        poll_.generation = r.next_generation();
        poll_sqe_ = {};
        prepare_poll(&poll_sqe_);
    }
}

inline void polled_read_op::await_suspend(std::coroutine_handle<> waiter) {
    waiter_ = waiter;
    if (!poll_first_) {
        parts_left_ = 1;
        ring_->submit(read_, read_sqe_);
        return;
    }
    // The poll's own CQE says nothing its read's does not: it fired, or the read failed.
    parts_left_ = ring_->submit_linked(poll_, poll_sqe_, read_, read_sqe_, /*quiet_first=*/true);
}

namespace detail {
// A coroutine frame that starts at once and frees itself when it ends.
struct self_owned {
    struct promise_type {
        self_owned get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }
    };
};
// Suspends until a task that already runs ends, without resuming it.
template <typename Promise>
struct await_end {
    std::coroutine_handle<Promise> h;
    bool await_ready() const noexcept { return h.done(); }
    void await_suspend(std::coroutine_handle<> awaiting) noexcept {
        h.promise().continuation = awaiting;
    }
    void await_resume() const noexcept {}
};
template <typename T>
self_owned own_until_done(task<T> t) {
    co_await await_end<typename task<T>::promise_type>{t.handle()};
    if (auto e = t.handle().promise().error) {
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            log::error("a task left by ring::run failed later: {}", ex.what());
        } catch (...) {
            log::error("a task left by ring::run failed later");
        }
    }
} // ~task frees the frame
} // namespace detail

template <typename T>
void ring::release_when_done(task<T> t) {
    detail::own_until_done(std::move(t));
}

// The ring that drives the calling thread: inside a store's member, the ring to co_await
// backing I/O on. Throws std::logic_error on a thread without one.
inline ring& this_ring() {
    ring* r = ring::current();
    if (!r)
        throw std::logic_error("dmuser::this_ring(): no ring on this thread");
    return *r;
}

} // namespace dmuser
