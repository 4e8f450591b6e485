// dmuser/thread_pool.hpp: blocking work off the ring. A store member whose backing call
// blocks (a library without an asynchronous API, a compression of many megabytes) hands
// it to a pool and awaits it; its thread's ring serves other requests meanwhile, and the
// coroutine resumes there when the work is done.
//
//   dmuser::thread_pool pool{4};
//   std::error_code ec = co_await pool.run([&] { return blocking_write(off, data); });
//
// No allocation per call: the work and its result live in the awaiting frame. An
// exception the work throws is rethrown by the co_await. The pool must outlive the work
// given to it; its destructor runs what is queued, then joins its threads.
#pragma once

#include "dmuser/ring.hpp"

#include <condition_variable>
#include <coroutine>
#include <exception>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace dmuser {

class thread_pool {
    struct job {
        void (*execute)(job*) noexcept = nullptr;
        job* next = nullptr;
    };

public:
    explicit thread_pool(unsigned threads) {
        if (threads == 0)
            throw std::invalid_argument("dmuser::thread_pool needs at least one thread");
        try {
            for (unsigned i = 0; i < threads; ++i)
                threads_.emplace_back([this] { work(); });
        } catch (...) {
            shut_down();
            throw;
        }
    }
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;
    ~thread_pool() { shut_down(); }

    template <typename F>
    class [[nodiscard]] run_op : job, completion {
    public:
        using result_type = std::invoke_result_t<F&>;

        run_op(thread_pool& pool, F fn) : pool_(pool), fn_(std::move(fn)) {}
        run_op(const run_op&) = delete;
        run_op& operator=(const run_op&) = delete;

        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> waiter) {
            ring* r = ring::current();
            if (!r)
                throw std::logic_error(
                    "dmuser::thread_pool::run awaited on a thread without a ring");
            waiter_ = waiter;
            ring_ = r;
            on_complete = &resume;
            execute = &run_here;
            r->expect_hand_off();
            try {
                pool_.enqueue(*this);
            } catch (...) {
                r->hand_off_not_coming();
                throw;
            }
        }
        result_type await_resume() {
            if (error_)
                std::rethrow_exception(error_);
            if constexpr (!std::is_void_v<result_type>)
                return std::move(*result_);
        }

    private:
        static void run_here(job* j) noexcept {
            auto* self = static_cast<run_op*>(j);
            try {
                if constexpr (std::is_void_v<result_type>)
                    self->fn_();
                else
                    self->result_.emplace(self->fn_());
            } catch (...) {
                self->error_ = std::current_exception();
            }
            self->ring_->hand_off(*self); // from here on, *self may be gone
        }
        static void resume(completion* c) noexcept { static_cast<run_op*>(c)->waiter_.resume(); }

        struct no_value {};
        thread_pool& pool_;
        F fn_;
        ring* ring_ = nullptr;
        std::coroutine_handle<> waiter_;
        std::exception_ptr error_;
        [[no_unique_address]] std::conditional_t<std::is_void_v<result_type>, no_value,
                                                 std::optional<result_type>>
            result_;
    };

    // Runs fn() on one of the pool's threads; co_await the result.
    template <typename F>
    run_op<F> run(F fn) {
        return run_op<F>(*this, std::move(fn));
    }

private:
    void enqueue(job& j) {
        {
            std::lock_guard lock(mutex_);
            if (stopping_)
                throw std::logic_error("dmuser::thread_pool: work given to a pool being destroyed");
            j.next = nullptr;
            (tail_ ? tail_->next : head_) = &j;
            tail_ = &j;
        }
        wake_.notify_one();
    }
    void work() {
        for (;;) {
            job* j;
            {
                std::unique_lock lock(mutex_);
                wake_.wait(lock, [&] { return head_ || stopping_; });
                if (!head_)
                    return; // stopping, and nothing left to run
                j = head_;
                head_ = j->next;
                if (!head_)
                    tail_ = nullptr;
            }
            j->execute(j);
        }
    }
    void shut_down() noexcept {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto& t : threads_)
            if (t.joinable())
                t.join();
    }

    std::mutex mutex_;
    std::condition_variable wake_;
    job* head_ = nullptr;
    job* tail_ = nullptr;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

} // namespace dmuser
