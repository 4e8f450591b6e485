// dmuser/remote_completion.hpp: an awaitable that another thread completes. It is the
// bridge from a callback-based library (librbd, a thread pool, anything that calls back
// on a thread of its own) to a coroutine, which resumes on its own ring. No allocation,
// no std::function: the state lives in the awaiting coroutine's frame.
//
//   dmuser::remote_completion<int> done;
//   start_async_io(..., [](void* arg, int r) {
//       static_cast<dmuser::remote_completion<int>*>(arg)->complete(r);
//   }, &done);
//   int r = co_await done;
//
// complete() is called once, from any thread: before the co_await, from inside the call
// that starts the work, or later. The object must stay alive until the co_await returns,
// and must be awaited on a thread that has a ring (a store member always is). That ring's
// destruction waits for the completion, since the library still names the frame.
#pragma once

#include "dmuser/ring.hpp"

#include <atomic>
#include <coroutine>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace dmuser {

template <typename T = void>
class remote_completion {
public:
    remote_completion() = default;
    remote_completion(const remote_completion&) = delete;
    remote_completion& operator=(const remote_completion&) = delete;

    // Any thread, once. Once it returns, the completion may already be gone.
    template <typename... V>
    void complete(V&&... value) {
        if constexpr (!std::is_void_v<T>)
            value_.emplace(std::forward<V>(value)...);
        else
            static_assert(sizeof...(V) == 0, "remote_completion<void>::complete() takes nothing");
        if (state_.exchange(done, std::memory_order_acq_rel) == waiting)
            ring_->hand_off(node_);
    }
    bool ready() const noexcept { return state_.load(std::memory_order_acquire) == done; }

    struct awaiter {
        remote_completion& self;
        bool await_ready() const noexcept { return self.ready(); }
        bool await_suspend(std::coroutine_handle<> waiter) { return self.suspend(waiter); }
        T await_resume() { return self.take(); }
    };
    awaiter operator co_await() & noexcept { return awaiter{*this}; }

private:
    bool suspend(std::coroutine_handle<> waiter) {
        ring* r = ring::current();
        if (!r)
            throw std::logic_error("dmuser::remote_completion awaited on a thread without a ring");
        node_.waiter = waiter;
        node_.on_complete = &node::resume;
        ring_ = r;
        int expected = empty;
        // The hand-off is announced before the state says anyone waits: the completing
        // thread can hand off only after that.
        r->expect_hand_off();
        if (state_.compare_exchange_strong(expected, waiting, std::memory_order_acq_rel,
                                           std::memory_order_acquire))
            return true;
        // complete() came first: no hand-off will come.
        r->hand_off_not_coming();
        return false;
    }
    T take() {
        if constexpr (!std::is_void_v<T>)
            return std::move(*value_);
    }

    enum : int { empty, waiting, done };
    struct node : completion {
        std::coroutine_handle<> waiter;
        static void resume(completion* c) noexcept { static_cast<node*>(c)->waiter.resume(); }
    };
    struct no_value {};
    std::atomic<int> state_{empty};
    ring* ring_ = nullptr;
    node node_;
    [[no_unique_address]] std::conditional_t<std::is_void_v<T>, no_value, std::optional<T>> value_;
};

} // namespace dmuser
