// dmuser/async_mutex.hpp: a mutex a coroutine awaits instead of blocking its thread, so the
// ring serves other requests meanwhile. Shared by the server's threads: a waiter resumes on
// its own ring. Fair: the lock passes to waiters in the order they came.
//
//   dmuser::async_mutex m;
//   {
//       auto held = co_await m.scoped_lock();   // unlocked when `held` goes
//       ...
//   }
#pragma once

#include "dmuser/detail/parked.hpp"

#include <coroutine>
#include <mutex>
#include <utility>

namespace dmuser {

class async_mutex {
public:
    async_mutex() = default;
    async_mutex(const async_mutex&) = delete;
    async_mutex& operator=(const async_mutex&) = delete;

    // Owns the lock until destroyed (or moved from).
    class [[nodiscard]] guard {
    public:
        explicit guard(async_mutex& m) noexcept : m_(&m) {}
        guard(guard&& other) noexcept : m_(std::exchange(other.m_, nullptr)) {}
        guard& operator=(guard&& other) noexcept {
            if (this != &other) {
                release();
                m_ = std::exchange(other.m_, nullptr);
            }
            return *this;
        }
        ~guard() { release(); }
        void release() noexcept {
            if (m_)
                std::exchange(m_, nullptr)->unlock();
        }

    private:
        async_mutex* m_;
    };

    class [[nodiscard]] lock_op : detail::parked {
    public:
        explicit lock_op(async_mutex& m) noexcept : m_(m) {}
        bool await_ready() noexcept { return m_.try_lock(); }
        bool await_suspend(std::coroutine_handle<> h) {
            std::lock_guard lock(m_.state_);
            if (!m_.locked_) {
                m_.locked_ = true;
                return false;
            }
            park(h, "dmuser::async_mutex");
            m_.waiters_.push(*this);
            return true;
        }
        void await_resume() const noexcept {}

    protected:
        async_mutex& m_;
    };
    struct [[nodiscard]] scoped_lock_op : lock_op {
        using lock_op::lock_op;
        guard await_resume() const noexcept { return guard(m_); }
    };

    // co_await lock(); ...; unlock();
    lock_op lock() noexcept { return lock_op(*this); }
    // auto held = co_await scoped_lock();
    scoped_lock_op scoped_lock() noexcept { return scoped_lock_op(*this); }
    bool try_lock() noexcept {
        std::lock_guard lock(state_);
        return !std::exchange(locked_, true);
    }
    // Any thread. The first waiter, if any, owns the lock from here on.
    void unlock() noexcept {
        detail::parked* next;
        {
            std::lock_guard lock(state_);
            next = waiters_.pop();
            if (!next)
                locked_ = false;
        }
        if (next)
            next->let_go();
    }

private:
    std::mutex state_; // guards locked_ and waiters_; held for a few instructions
    bool locked_ = false;
    detail::parked_queue waiters_;
};

} // namespace dmuser
