// dmuser/spawn.hpp: start work that nobody awaits, whose failure is always reported.
#pragma once

#include "dmuser/frame_allocator.hpp"
#include "dmuser/log.hpp"
#include "dmuser/task.hpp"

#include <atomic>
#include <coroutine>
#include <exception>
#include <functional>
#include <string>
#include <utility>

namespace dmuser {

// Called with the spawn's label and the exception that ended it.
using failure_handler = std::function<void(std::string_view what, std::exception_ptr)>;

inline std::string describe(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) {
        return "unknown exception";
    }
}

inline void log_failure(std::string_view what, std::exception_ptr e) {
    log::error("{} failed: {}", what, describe(e));
}

namespace detail {

// Starts at once and frees its own frame when done.
struct detached {
    struct promise_type : frame_allocated {
        detached get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        // The body below catches everything; reaching here means the handler threw.
        void unhandled_exception() noexcept { std::terminate(); }
    };
};

template <typename T, typename Handler>
detached run_detached(task<T> work, const char* what, Handler on_failure) {
    std::exception_ptr failure;
    try {
        co_await std::move(work);
    } catch (...) {
        failure = std::current_exception();
    }
    if (failure) {
        try {
            on_failure(std::string_view(what), failure);
        } catch (...) {
            log_failure(what, failure);
        }
    }
}

} // namespace detail

// Runs `work` now, up to its first suspension, on the calling thread; it continues on
// whatever resumes it (normally this thread's ring). `what` must outlive the work: use a
// string literal. An exception is passed to on_failure (default: logged as an error).
template <typename T, typename Handler = decltype(&log_failure)>
void spawn(task<T> work, const char* what = "spawned task", Handler on_failure = &log_failure) {
    detail::run_detached(std::move(work), what, std::move(on_failure));
}

} // namespace dmuser
