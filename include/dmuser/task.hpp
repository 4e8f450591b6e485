// dmuser/task.hpp: task<T>, a lazy coroutine that starts when awaited and resumes its
// awaiter by symmetric transfer (no stack growth however long a chain of completions).
#pragma once

#include "dmuser/frame_allocator.hpp"

#include <coroutine>
#include <exception>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace dmuser {

template <typename T = void>
class task;

namespace detail {

struct task_promise_base : frame_allocated {
    std::coroutine_handle<> continuation = std::noop_coroutine();
    std::exception_ptr error;
    bool awaited = false; // a second co_await would resume it twice, or take a moved value

    std::suspend_always initial_suspend() noexcept { return {}; }

    struct final_awaiter {
        bool await_ready() noexcept { return false; }
        template <typename Promise>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> self) noexcept {
            return self.promise().continuation;
        }
        void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept { error = std::current_exception(); }
    void rethrow_if_failed() {
        if (error)
            std::rethrow_exception(error);
    }
};

template <typename T>
struct task_promise : task_promise_base {
    std::optional<T> value;

    task<T> get_return_object() noexcept;
    template <typename U = T>
    requires std::is_convertible_v<U&&, T>
    void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
        value.emplace(std::forward<U>(v));
    }
    T take() {
        rethrow_if_failed();
        return std::move(*value);
    }
};

template <>
struct task_promise<void> : task_promise_base {
    task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void take() { rethrow_if_failed(); }
};

} // namespace detail

// A lazily started coroutine producing a T (or an exception, rethrown in the awaiter).
// Await it exactly once: `T v = co_await make_task();`. Destroying a task that never ran
// destroys its frame; a task must not be destroyed while it runs.
template <typename T>
class [[nodiscard]] task {
public:
    static_assert(!std::is_reference_v<T>, "task<T&> is not supported; return a pointer");
    using promise_type = detail::task_promise<T>;
    using value_type = T;

    task() noexcept = default;
    explicit task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
    task(task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
    task& operator=(task&& other) noexcept {
        if (this != &other) {
            if (h_)
                h_.destroy();
            h_ = std::exchange(other.h_, {});
        }
        return *this;
    }
    task(const task&) = delete;
    task& operator=(const task&) = delete;
    ~task() {
        if (h_)
            h_.destroy();
    }

    bool valid() const noexcept { return static_cast<bool>(h_); }
    bool done() const noexcept { return !h_ || h_.done(); }

    // Awaiting an empty task, or one awaited (or run) before, throws std::logic_error
    // in the awaiting coroutine.
    struct awaiter {
        std::coroutine_handle<promise_type> h;
        bool await_ready() {
            if (!h)
                throw std::logic_error("co_await on an empty dmuser::task");
            claim(h);
            return h.done();
        }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
            h.promise().continuation = awaiting;
            return h;
        }
        T await_resume() { return h.promise().take(); }
    };
    awaiter operator co_await() & noexcept { return awaiter{h_}; }
    awaiter operator co_await() && noexcept { return awaiter{h_}; }

    // Marks a task as awaited once; for drivers that start it themselves (ring::run).
    static void claim(std::coroutine_handle<promise_type> h) {
        if (std::exchange(h.promise().awaited, true))
            throw std::logic_error("dmuser::task awaited twice");
    }

    // For drivers (ring::run, spawn): start or inspect the coroutine directly.
    std::coroutine_handle<promise_type> handle() const noexcept { return h_; }

private:
    std::coroutine_handle<promise_type> h_;
};

namespace detail {
template <typename T>
task<T> task_promise<T>::get_return_object() noexcept {
    return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
    return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}
} // namespace detail

template <typename T>
inline constexpr bool is_task_v = false;
template <typename T>
inline constexpr bool is_task_v<task<T>> = true;

} // namespace dmuser
