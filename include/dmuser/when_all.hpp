// dmuser/when_all.hpp: run several tasks at once and wait for all of them: a store that
// splits a request over backends (stripes, mirrors, a read and a metadata update) keeps
// them in flight together instead of one after another.
//
//   auto [a, b] = co_await dmuser::when_all(read_left(), read_right());
//   std::vector<std::error_code> each = co_await dmuser::when_all(std::move(tasks));
//
// The tasks start in order on the awaiting thread, each running until it first suspends;
// the co_await returns once every one has ended. A task<void> gives std::monostate in the
// tuple. If tasks throw, the first exception (in argument order) is rethrown, once all
// have ended: none is left running on freed state.
#pragma once

#include "dmuser/task.hpp"

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace dmuser {

namespace detail {

template <typename T>
using result_or_monostate = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

// Counts the tasks still running; the last to end resumes the awaiting coroutine.
struct when_all_latch {
    std::atomic<std::size_t> left;
    std::coroutine_handle<> awaiting;
    // True if this was the last: the caller resumes `awaiting`.
    bool arrive() noexcept { return left.fetch_sub(1, std::memory_order_acq_rel) == 1; }
};

// The coroutine that runs one task and reports to the latch.
struct when_all_child {
    struct promise_type : frame_allocated {
        when_all_latch* latch = nullptr;
        when_all_child get_return_object() noexcept {
            return when_all_child{std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_always initial_suspend() noexcept { return {}; }
        struct final_awaiter {
            bool await_ready() noexcept { return false; }
            std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
                if (h.promise().latch->arrive())
                    return h.promise().latch->awaiting;
                return std::noop_coroutine();
            }
            void await_resume() noexcept {}
        };
        final_awaiter final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); } // the body catches all
    };
    explicit when_all_child(std::coroutine_handle<promise_type> h) noexcept : h(h) {}
    when_all_child(when_all_child&& o) noexcept : h(std::exchange(o.h, {})) {}
    when_all_child(const when_all_child&) = delete;
    ~when_all_child() {
        if (h)
            h.destroy();
    }
    std::coroutine_handle<promise_type> h;
};

template <typename T>
when_all_child run_child(task<T>& t, std::optional<result_or_monostate<T>>& out,
                         std::exception_ptr& error) {
    try {
        if constexpr (std::is_void_v<T>) {
            co_await t;
            out.emplace();
        } else {
            out.emplace(co_await t);
        }
    } catch (...) {
        error = std::current_exception();
    }
}

// Starts every child, then suspends until the last has ended.
struct when_all_start {
    std::vector<when_all_child>& children;
    when_all_latch& latch;
    bool await_ready() const noexcept { return children.empty(); }
    bool await_suspend(std::coroutine_handle<> h) noexcept {
        latch.awaiting = h;
        latch.left.store(children.size() + 1, std::memory_order_relaxed);
        for (auto& c : children) {
            c.h.promise().latch = &latch;
            c.h.resume();
        }
        // The +1 is ours: if every child already ended, go on without suspending.
        return !latch.arrive();
    }
    void await_resume() const noexcept {}
};

inline void rethrow_first(const std::vector<std::exception_ptr>& errors) {
    for (const auto& e : errors)
        if (e)
            std::rethrow_exception(e);
}

} // namespace detail

template <typename... T>
task<std::tuple<detail::result_or_monostate<T>...>> when_all(task<T>... tasks) {
    std::tuple<task<T>...> owned(std::move(tasks)...);
    std::tuple<std::optional<detail::result_or_monostate<T>>...> results;
    std::vector<std::exception_ptr> errors(sizeof...(T));
    std::vector<detail::when_all_child> children;
    children.reserve(sizeof...(T));
    [&]<std::size_t... I>(std::index_sequence<I...>) {
        (children.push_back(detail::run_child(std::get<I>(owned), std::get<I>(results), errors[I])),
         ...);
    }
    (std::index_sequence_for<T...>{});
    detail::when_all_latch latch;
    co_await detail::when_all_start{children, latch};
    detail::rethrow_first(errors);
    co_return std::apply(
        [](auto&... r) { return std::tuple<detail::result_or_monostate<T>...>(std::move(*r)...); },
        results);
}

// Every task's result in order; task<void>s give task<void>.
template <typename T>
task<std::conditional_t<std::is_void_v<T>, void, std::vector<T>>>
when_all(std::vector<task<T>> tasks) {
    std::vector<std::optional<detail::result_or_monostate<T>>> results(tasks.size());
    std::vector<std::exception_ptr> errors(tasks.size());
    std::vector<detail::when_all_child> children;
    children.reserve(tasks.size());
    for (std::size_t i = 0; i < tasks.size(); ++i)
        children.push_back(detail::run_child(tasks[i], results[i], errors[i]));
    detail::when_all_latch latch;
    co_await detail::when_all_start{children, latch};
    detail::rethrow_first(errors);
    if constexpr (!std::is_void_v<T>) {
        std::vector<T> out;
        out.reserve(results.size());
        for (auto& r : results)
            out.push_back(std::move(*r));
        co_return out;
    }
}

} // namespace dmuser
