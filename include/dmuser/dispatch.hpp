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

// The reply to a request the store answered with `ec`: its result, and no data unless it
// succeeded.
inline void finish_reply(reply& out, std::error_code ec, const request& req) {
    out.status = to_result(ec);
    if (out.status != result::success) {
        out.data = {};
        if (out.status == result::error)
            log::debug("{}: {}", describe(req), ec.message());
    }
}

// A READ's start: true if the store lent its own memory (out.data is the answer), else
// read_area is zeroed where the store may not fill it.
template <BlockStore S>
bool read_lent([[maybe_unused]] S& store, const request& req,
               [[maybe_unused]] std::span<std::byte> read_area, reply& out) {
    if constexpr (has_read_view<S>) {
        std::span<const std::byte> view = store.read_view(req.offset(), req.len);
        if (view.size() == req.len) {
            out.data = view;
            return true;
        }
    }
    // The area still holds an earlier request's bytes: a store that succeeds without
    // filling its span must answer zeros, never those.
    if constexpr (!fills_reads<S>)
        std::memset(read_area.data(), 0, req.len);
    return false;
}

// Whether a store member returns at once (void or std::error_code), not as a task.
template <typename R>
inline constexpr bool completes_at_once = std::is_void_v<R> || std::is_same_v<R, std::error_code>;
template <typename S>
inline constexpr bool reads_at_once = completes_at_once<decltype(call_read(
    std::declval<S&>(), std::declval<context_for<S>&>(), 0, std::span<std::byte>()))>;
template <typename S>
inline constexpr bool writes_at_once = completes_at_once<decltype(call_write(
    std::declval<S&>(), std::declval<context_for<S>&>(), 0, std::span<const std::byte>()))>;

// A member that completes at once, called: its outcome.
template <typename Call>
std::error_code call_now(Call&& call) {
    if constexpr (std::is_void_v<std::invoke_result_t<Call&>>) {
        call();
        return {};
    } else {
        return call();
    }
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

// Serves a READ, or a WRITE without PREFLUSH or FUA, without a coroutine where the
// store's member for it completes at once (returns void or std::error_code): returns
// true, with the reply in `out`. False (nothing done) for any other request: co_await
// dispatch() for it. As dispatch, never throws for the store.
template <BlockStore S>
bool dispatch_now(S& store, context_for<S>& ctx, const request& req, std::span<std::byte> read_area,
                  reply& out) {
    using namespace detail;
    const bool read = req.type == DM_USER_REQ_MAP_READ;
    if (read ? !reads_at_once<S>
             : (req.type != DM_USER_REQ_MAP_WRITE || !writes_at_once<S> ||
                req.has(DM_USER_REQ_MAP_FLAG_PREFLUSH) || req.has(DM_USER_REQ_MAP_FLAG_FUA)))
        return false;
    out = reply{};
    std::error_code ec;
    try {
        if (req.len == 0) {
            // an empty READ or WRITE: nothing to do
        } else if (read) {
            if constexpr (reads_at_once<S>) {
                if (read_lent(store, req, read_area, out))
                    return true;
                ec = call_now(
                    [&] { return call_read(store, ctx, req.offset(), read_area.first(req.len)); });
                if (!ec)
                    out.data = read_area.first(req.len);
            }
        } else if constexpr (writes_at_once<S>) {
            ec = call_now([&] { return call_write(store, ctx, req.offset(), req.payload); });
        }
    } catch (...) {
        log::error("{}: store threw: {}", describe(req), describe(std::current_exception()));
        out = reply{result::error, {}};
        return true;
    }
    finish_reply(out, ec, req);
    return true;
}

// Serves one checked request (see check_request). read_area has room for req.len bytes:
// a READ lands there unless the store lends its own memory. ctx is what members that take
// a context get (it must outlive the task). Never throws: an exception from the store is
// logged with the request and answered ERROR.
template <BlockStore S>
task<reply> dispatch(S& store, context_for<S>& ctx, request req, std::span<std::byte> read_area) {
    using namespace detail;
    std::error_code ec;
    reply out;
    if (dispatch_now(store, ctx, req, read_area, out))
        co_return out;
    try {
        switch (req.type) {
        case DM_USER_REQ_MAP_READ:
            if (req.len == 0)
                break;
            if (read_lent(store, req, read_area, out))
                co_return out;
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
    finish_reply(out, ec, req);
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
