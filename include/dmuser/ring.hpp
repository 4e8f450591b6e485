// dmuser/ring.hpp: the reactor. One ring per thread drives every coroutine of that thread
// over io_uring: operations are awaitables, their SQEs are batched into one io_uring_enter
// per loop turn, and each CQE's user_data points at the operation that awaits it.
#pragma once

#include "dmuser/log.hpp"
#include "dmuser/task.hpp"
#include "dmuser/unique_fd.hpp"

#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <liburing.h>
#include <mutex>
#include <span>
#include <stdexcept>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <system_error>
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

// The outcome of one operation: res as io_uring reports it (bytes, or -errno).
struct io_result {
    int res = 0;
    bool ok() const noexcept { return res >= 0; }
    std::size_t bytes() const noexcept { return res > 0 ? static_cast<std::size_t>(res) : 0; }
    std::error_code error() const noexcept {
        return res < 0 ? std::error_code(-res, std::system_category()) : std::error_code{};
    }
};

// Stable state of an operation in flight; a CQE's user_data is its address. It must stay
// alive (and so must the buffers it names) until its CQE has been reaped.
struct completion {
    using callback = void (*)(completion*) noexcept;
    callback on_complete = nullptr;
    int res = 0;
    unsigned cqe_flags = 0;
    completion* next_ready = nullptr;
};

// An awaitable io_uring operation: `io_result r = co_await ring.read(fd, buf, off);`.
// It is neither copyable nor movable, so the address the kernel holds stays valid; create
// it in the co_await expression (or as a local you await once). The SQE is only taken
// when the coroutine suspends, so an operation never awaited submits nothing.
class [[nodiscard]] io_op : public completion {
public:
    template <typename Prepare>
    io_op(ring& r, Prepare&& prepare) noexcept : ring_(&r) {
        on_complete = &resume_waiter;
        sqe_ = {};
        prepare(&sqe_, this);
    }
    io_op(const io_op&) = delete;
    io_op& operator=(const io_op&) = delete;

    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> waiter);
    io_result await_resume() const noexcept { return io_result{res}; }

    // Key for ring::cancel.
    std::uint64_t id() const noexcept { return reinterpret_cast<std::uintptr_t>(this); }

private:
    static void resume_waiter(completion* c) noexcept { static_cast<io_op*>(c)->waiter_.resume(); }

    ring* ring_;
    io_uring_sqe sqe_;
    std::coroutine_handle<> waiter_;

protected:
    __kernel_timespec timespec_{}; // for timeouts: the kernel reads it after submission
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
    // written after its owner is gone, then closes the ring. Bounded (see shut_down()).
    ~ring() {
        shut_down();
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
    io_op readv(int fd, std::span<const iovec> iov, std::uint64_t offset) {
        return io_op(*this, [&](io_uring_sqe* s, io_op*) {
            io_uring_prep_readv(s, fd, iov.data(), static_cast<unsigned>(iov.size()), offset);
        });
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
        io_uring_sqe* s = get_sqe();
        *s = prepared;
        io_uring_sqe_set_data(s, &c);
        ++in_flight_;
        detail::io_release();
    }

    // A free SQE; a full SQ is flushed to the kernel (and, if the kernel pushes back,
    // completions are reaped into the ready list without resuming anyone) and retried.
    io_uring_sqe* get_sqe() {
        for (;;) {
            if (io_uring_sqe* s = io_uring_get_sqe(&ring_))
                return s;
            int r = io_uring_submit(&ring_);
            if (r == -EBUSY || r == -EAGAIN)
                reap();
            else if (r < 0 && r != -EINTR)
                throw std::system_error(-r, std::system_category(), "io_uring_submit");
        }
    }

private:
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
        struct access : io_op {
            static __kernel_timespec& get(io_op& o) { return static_cast<access&>(o).timespec_; }
        };
        return access::get(op);
    }
    static unsigned clamp(std::size_t n) noexcept {
        return n > 0x7ffff000u ? 0x7ffff000u : static_cast<unsigned>(n);
    }

    void reap() noexcept {
        io_uring_cqe* cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring_, head, cqe) {
            ++seen;
            auto* c = static_cast<completion*>(io_uring_cqe_get_data(cqe));
            if (!c)
                continue; // the ring's own cancel requests carry no state
            if (c == &probe_) {
                probe_.res = cqe->res;
                probe_done_ = true;
                continue;
            }
            --in_flight_;
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
    static void on_wake(completion* c) noexcept {
        ring* self = static_cast<wake_completion*>(c)->owner;
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
    ring* previous_ = nullptr;
    completion probe_; // shut_down's cancel-everything request
    bool probe_done_ = false;

    struct wake_completion : completion {
        ring* owner = nullptr;
    };
    unique_fd wake_fd_;
    std::chrono::microseconds busy_poll_{0};
    wake_completion wake_;
    std::uint64_t wake_count_ = 0;
    std::mutex posted_mutex_;
    std::vector<std::function<void()>> posted_;
};

inline void io_op::await_suspend(std::coroutine_handle<> waiter) {
    waiter_ = waiter;
    ring_->submit(*this, sqe_);
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
