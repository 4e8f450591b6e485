// dmuser/async_semaphore.hpp: a counting semaphore a coroutine awaits instead of blocking
// its thread: e.g. at most N requests at once in a backend that cannot take more. Shared
// by the server's threads; a waiter resumes on its own ring. Fair: units go to waiters in
// the order they came, so a stream of acquirers cannot starve an earlier one.
//
//   dmuser::async_semaphore slots{8};
//   co_await slots.acquire();
//   ... at most 8 coroutines here ...
//   slots.release();
#pragma once

#include "dmuser/detail/parked.hpp"

#include <coroutine>
#include <cstddef>
#include <mutex>

namespace dmuser {

class async_semaphore {
public:
    explicit async_semaphore(std::size_t units) noexcept : available_(units) {}
    async_semaphore(const async_semaphore&) = delete;
    async_semaphore& operator=(const async_semaphore&) = delete;

    class [[nodiscard]] acquire_op : detail::parked {
    public:
        explicit acquire_op(async_semaphore& s) noexcept : s_(s) {}
        bool await_ready() noexcept { return s_.try_acquire(); }
        bool await_suspend(std::coroutine_handle<> h) {
            std::lock_guard lock(s_.state_);
            if (s_.available_ > 0 && s_.waiters_.empty()) {
                --s_.available_;
                return false;
            }
            park(h, "dmuser::async_semaphore");
            s_.waiters_.push(*this);
            return true;
        }
        void await_resume() const noexcept {}

    private:
        async_semaphore& s_;
    };

    // Takes one unit, waiting for it if none is free.
    acquire_op acquire() noexcept { return acquire_op(*this); }
    bool try_acquire() noexcept {
        std::lock_guard lock(state_);
        if (available_ == 0 || !waiters_.empty())
            return false;
        --available_;
        return true;
    }
    // Any thread: gives back n units, each to the next waiter if there is one.
    void release(std::size_t n = 1) noexcept {
        detail::parked_queue woken;
        {
            std::lock_guard lock(state_);
            for (; n > 0; --n) {
                detail::parked* next = waiters_.pop();
                if (!next)
                    break;
                woken.push(*next);
            }
            available_ += n;
        }
        while (detail::parked* p = woken.pop())
            p->let_go();
    }
    std::size_t available() const noexcept {
        std::lock_guard lock(state_);
        return available_;
    }

private:
    mutable std::mutex state_; // guards available_ and waiters_
    std::size_t available_;
    detail::parked_queue waiters_;
};

} // namespace dmuser
