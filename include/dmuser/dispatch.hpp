// dmuser/dispatch.hpp: one request, one coroutine. Maps a request onto a BlockStore's
// members, emulating what the store lacks where that is sound, and turns the outcome
// (error_code or exception) into the response result.
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/log.hpp"
#include "dmuser/protocol.hpp"
#include "dmuser/spawn.hpp"
#include "dmuser/task.hpp"

#include <algorithm>
#include <array>
#include <coroutine>
#include <cstring>
#include <span>
#include <system_error>
#include <type_traits>
#include <utility>

namespace dmuser {

// The answer to one request; data is the READ payload of a success (empty otherwise).
struct reply {
    result status = result::success;
    std::span<const std::byte> data;
};

namespace detail {

struct ready_error {
    std::error_code ec;
    bool await_ready() const noexcept { return true; }
    void await_suspend(std::coroutine_handle<>) const noexcept {}
    std::error_code await_resume() const noexcept { return ec; }
};

struct void_task_as_error {
    task<void> t;
    task<void>::awaiter inner{t.handle()};
    explicit void_task_as_error(task<void>&& tk) : t(std::move(tk)), inner{t.handle()} {}
    bool await_ready() { return inner.await_ready(); }
    std::coroutine_handle<> await_suspend(std::coroutine_handle<> h) noexcept {
        return inner.await_suspend(h);
    }
    std::error_code await_resume() {
        inner.await_resume();
        return {};
    }
};

// Calls a store member and gives back something to co_await for its error_code, whether
// the member completes at once or is a coroutine.
template <typename Call>
auto invoke_store(Call&& call) {
    using R = std::invoke_result_t<Call&>;
    if constexpr (std::is_void_v<R>) {
        call();
        return ready_error{};
    } else if constexpr (std::is_same_v<R, std::error_code>) {
        return ready_error{call()};
    } else if constexpr (std::is_same_v<R, task<void>>) {
        return void_task_as_error{call()};
    } else {
        static_assert(std::is_same_v<R, task<std::error_code>>);
        return call();
    }
}

inline constexpr std::size_t zero_chunk = 64 * 1024;
inline const std::array<std::byte, zero_chunk> zeros{};

inline result to_result(std::error_code ec) {
    if (!ec)
        return result::success;
    if (ec == std::errc::operation_not_supported || ec == std::errc::not_supported)
        return result::unsupported;
    return result::error;
}

template <BlockStore S>
task<std::error_code> flush_store(S& store, context_for<S>& ctx) {
    if constexpr (has_flush<S>)
        co_return co_await invoke_store([&] { return call_flush(store, ctx); });
    else
        co_return std::error_code{}; // no volatile cache: nothing to make durable
}

template <BlockStore S>
task<std::error_code> write_zeroes_by_writes(S& store, context_for<S>& ctx, std::uint64_t offset,
                                             std::uint64_t len) {
    while (len > 0) {
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(len, zero_chunk));
        std::span<const std::byte> chunk(zeros.data(), n);
        if (auto ec = co_await invoke_store([&] { return call_write(store, ctx, offset, chunk); }))
            co_return ec;
        offset += n;
        len -= n;
    }
    co_return std::error_code{};
}

template <BlockStore S>
task<std::error_code> do_write(S& store, context_for<S>& ctx, const request& req) {
    if (req.has(DM_USER_REQ_MAP_FLAG_PREFLUSH))
        if (auto ec = co_await flush_store(store, ctx))
            co_return ec;
    if (req.len == 0)
        co_return std::error_code{}; // a pure flush
    if (req.has(DM_USER_REQ_MAP_FLAG_FUA)) {
        if constexpr (has_write_fua<S>)
            co_return co_await invoke_store(
                [&] { return call_write_fua(store, ctx, req.offset(), req.payload); });
        if (auto ec = co_await invoke_store(
                [&] { return call_write(store, ctx, req.offset(), req.payload); }))
            co_return ec;
        co_return co_await flush_store(store, ctx);
    }
    co_return co_await invoke_store(
        [&] { return call_write(store, ctx, req.offset(), req.payload); });
}

} // namespace detail

// Serves one checked request (see check_request). read_area has room for req.len bytes:
// a READ lands there unless the store lends its own memory. ctx is what members that take
// a context get (it must outlive the task). Never throws: an exception from the store is
// logged with the request and answered ERROR.
template <BlockStore S>
task<reply> dispatch(S& store, context_for<S>& ctx, request req, std::span<std::byte> read_area) {
    using namespace detail;
    std::error_code ec;
    reply out;
    try {
        switch (req.type) {
        case DM_USER_REQ_MAP_READ:
            if (req.len == 0)
                break;
            if constexpr (has_read_view<S>) {
                std::span<const std::byte> view = store.read_view(req.offset(), req.len);
                if (view.size() == req.len) {
                    out.data = view;
                    co_return out;
                }
            }
            // The area still holds an earlier request's bytes: a store that succeeds
            // without filling its span must answer zeros, never those.
            if constexpr (!fills_reads<S>)
                std::memset(read_area.data(), 0, req.len);
            ec = co_await invoke_store(
                [&] { return call_read(store, ctx, req.offset(), read_area.first(req.len)); });
            if (!ec)
                out.data = read_area.first(req.len);
            break;
        case DM_USER_REQ_MAP_WRITE:
            ec = co_await do_write(store, ctx, req);
            break;
        case DM_USER_REQ_MAP_FLUSH:
            ec = co_await flush_store(store, ctx);
            break;
        case DM_USER_REQ_MAP_DISCARD:
            if constexpr (has_discard<S>)
                ec = co_await invoke_store(
                    [&] { return call_discard(store, ctx, req.offset(), req.len); });
            else
                ec = std::make_error_code(std::errc::operation_not_supported);
            break;
        case DM_USER_REQ_MAP_SECURE_ERASE:
            if constexpr (has_secure_erase<S>)
                ec = co_await invoke_store(
                    [&] { return call_secure_erase(store, ctx, req.offset(), req.len); });
            else
                ec = std::make_error_code(std::errc::operation_not_supported);
            break;
        case DM_USER_REQ_MAP_WRITE_ZEROES:
            if constexpr (has_write_zeroes<S>)
                ec = co_await invoke_store(
                    [&] { return call_write_zeroes(store, ctx, req.offset(), req.len); });
            else
                ec = co_await write_zeroes_by_writes(store, ctx, req.offset(), req.len);
            break;
        default:
            ec = std::make_error_code(std::errc::operation_not_supported);
            break;
        }
    } catch (...) {
        log::error("{}: store threw: {}", describe(req), describe(std::current_exception()));
        co_return reply{result::error, {}};
    }
    out.status = to_result(ec);
    if (out.status != result::success) {
        out.data = {};
        if (out.status == result::error)
            log::debug("{}: {}", describe(req), ec.message());
    }
    co_return out;
}

// For a store without per-thread state: a context with the request's own fields.
template <BlockStore S>
requires std::is_void_v<thread_state_t<S>> task<reply> dispatch(S& store, request req,
                                                                std::span<std::byte> read_area) {
    request_context<> ctx(request_info{.seq = req.seq, .type = req.type, .flags = req.flags});
    co_return co_await dispatch(store, ctx, req, read_area);
}

} // namespace dmuser
