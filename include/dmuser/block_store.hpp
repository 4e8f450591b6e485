// dmuser/block_store.hpp: the BlockStore concept, what a daemon's storage type provides.
//
// Required: size() in bytes, read(offset, span<byte>) and write(offset, span<const byte>).
// Optional, detected at compile time: flush(), discard(offset, len),
// write_zeroes(offset, len), secure_erase(offset, len), write_fua(offset, data) (a write
// that is durable when it completes), read_view(offset, len) (lend the store's own
// memory for a READ: the reply goes out straight from it, no copy) and
// write_view(offset, len) (lend it for a WRITE: the payload is read straight into it).
//
// Each operation may complete at once, returning void or std::error_code, or be a
// coroutine returning dmuser::task<void> or dmuser::task<std::error_code> that co_awaits
// backing I/O on dmuser::this_ring(). An error_code equal to
// std::errc::operation_not_supported answers UNSUPPORTED; any other error answers ERROR;
// so does an exception, which is logged with its request.
//
// Members are called from every server thread at once when the server runs more than one:
// a store shared by threads must be thread-safe for requests on different ranges. A member
// may take a leading `request_context<...>&` (request_context.hpp): the request's flags
// and seq, the serving thread, the stop, and the store's per-thread state.
#pragma once

#include "dmuser/request_context.hpp"
#include "dmuser/task.hpp"

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>

namespace dmuser {

// What a store operation may return.
template <typename R>
concept store_result = std::same_as<R, void> || std::same_as<R, std::error_code> ||
    std::same_as<R, task<void>> || std::same_as<R, task<std::error_code>>;

// Each operation may take the request's context first (request_context.hpp); both forms
// are detected, and the one with the context is preferred.
template <typename S>
concept BlockStore = requires(S& s) {
    { s.size() } -> std::convertible_to<std::uint64_t>;
}
&&(
    requires(S& s, std::uint64_t offset, std::span<std::byte> out) {
        { s.read(offset, out) } -> store_result;
    } ||
    requires(S & s, context_for<S>& c, std::uint64_t offset, std::span<std::byte> out) {
        { s.read(c, offset, out) } -> store_result;
    }) &&
    (
        requires(S & s, std::uint64_t offset, std::span<const std::byte> in) {
            { s.write(offset, in) } -> store_result;
        } ||
        requires(S & s, context_for<S>& c, std::uint64_t offset, std::span<const std::byte> in) {
            { s.write(c, offset, in) } -> store_result;
        });

// Optional members. A store without flush() has no volatile cache: a flush succeeds at once.
template <typename S>
concept has_flush = requires(S& s) {
    { s.flush() } -> store_result;
}
|| requires(S& s, context_for<S>& c) {
    { s.flush(c) } -> store_result;
};
template <typename S>
concept has_discard = requires(S& s, std::uint64_t offset, std::uint64_t len) {
    { s.discard(offset, len) } -> store_result;
}
|| requires(S& s, context_for<S>& c, std::uint64_t offset, std::uint64_t len) {
    { s.discard(c, offset, len) } -> store_result;
};
template <typename S>
concept has_write_zeroes = requires(S& s, std::uint64_t offset, std::uint64_t len) {
    { s.write_zeroes(offset, len) } -> store_result;
}
|| requires(S& s, context_for<S>& c, std::uint64_t offset, std::uint64_t len) {
    { s.write_zeroes(c, offset, len) } -> store_result;
};
template <typename S>
concept has_secure_erase = requires(S& s, std::uint64_t offset, std::uint64_t len) {
    { s.secure_erase(offset, len) } -> store_result;
}
|| requires(S& s, context_for<S>& c, std::uint64_t offset, std::uint64_t len) {
    { s.secure_erase(c, offset, len) } -> store_result;
};
// Native FUA: the SDK calls write_fua instead of write-then-flush for a FUA write.
template <typename S>
concept has_write_fua = requires(S& s, std::uint64_t offset, std::span<const std::byte> in) {
    { s.write_fua(offset, in) } -> store_result;
}
|| requires(S& s, context_for<S>& c, std::uint64_t offset, std::span<const std::byte> in) {
    { s.write_fua(c, offset, in) } -> store_result;
};
// Zero-copy READ: a span of exactly len bytes that stays valid and unchanged (barring
// concurrent writes to the same range) until the reply is written, or an empty span to
// fall back to read().
template <typename S>
concept has_read_view = requires(S& s, std::uint64_t offset, std::uint64_t len) {
    { s.read_view(offset, len) } -> std::convertible_to<std::span<const std::byte>>;
};

// Zero-copy WRITE: a span of exactly len bytes of the store's own memory, into which the
// server reads a WRITE's payload as it arrives, or an empty span to fall back to write().
// Lending the span is the write: a request that fails halfway leaves the range partly
// written, as a failed write leaves a disk. Used for writes without PREFLUSH/FUA (any
// write if the store has neither flush() nor write_fua()).
template <typename S>
concept has_write_view = requires(S& s, std::uint64_t offset, std::uint64_t len) {
    { s.write_view(offset, len) } -> std::convertible_to<std::span<std::byte>>;
};

// The READ contract: read() fills its whole span on success. The span is the slot's
// buffer, which held an earlier request's bytes, so the server zeroes it first: a store
// that leaves part of it untouched answers zeros there, never another request's data. A
// store that always fills every byte can skip that memset by declaring
// `static constexpr bool fills_reads = true;`.
template <typename S>
concept fills_reads = requires {
    requires static_cast<bool>(S::fills_reads);
};

// A store that never takes writes declares `static constexpr bool read_only_device = true;`:
// serve_device then makes the device read-only, and the kernel refuses writes itself.
template <typename S>
concept read_only_store = requires {
    requires static_cast<bool>(S::read_only_device);
};

// What a store can do, where only the running program knows (a store behind a filter stack
// chosen on the command line, filters/any_store.hpp): `store_capabilities capabilities()
// const`. serve_device's table then follows it instead of the members' presence.
struct store_capabilities {
    bool flush = false;
    bool write_fua = false;
    bool discard = false;
    bool write_zeroes = false;
    bool secure_erase = false;
    bool read_only = false;
};
template <typename S>
concept has_runtime_capabilities = requires(const S& s) {
    { s.capabilities() } -> std::same_as<store_capabilities>;
};

// Per-thread state (request_context.hpp): made with open_thread(index) where the store has
// it, else default-constructed.
template <typename S>
concept has_open_thread = requires(S& s, unsigned index) {
    { s.open_thread(index) } -> std::same_as<thread_state_t<S>>;
};

namespace detail {
// The store's members, called with the request's context where they take one.
template <typename S>
decltype(auto) call_read(S& s, context_for<S>& c, std::uint64_t off, std::span<std::byte> out) {
    if constexpr (requires { s.read(c, off, out); })
        return s.read(c, off, out);
    else
        return s.read(off, out);
}
template <typename S>
decltype(auto) call_write(S& s, context_for<S>& c, std::uint64_t off,
                          std::span<const std::byte> in) {
    if constexpr (requires { s.write(c, off, in); })
        return s.write(c, off, in);
    else
        return s.write(off, in);
}
template <typename S>
decltype(auto) call_write_fua(S& s, context_for<S>& c, std::uint64_t off,
                              std::span<const std::byte> in) {
    if constexpr (requires { s.write_fua(c, off, in); })
        return s.write_fua(c, off, in);
    else
        return s.write_fua(off, in);
}
template <typename S>
decltype(auto) call_flush(S& s, context_for<S>& c) {
    if constexpr (requires { s.flush(c); })
        return s.flush(c);
    else
        return s.flush();
}
template <typename S>
decltype(auto) call_discard(S& s, context_for<S>& c, std::uint64_t off, std::uint64_t len) {
    if constexpr (requires { s.discard(c, off, len); })
        return s.discard(c, off, len);
    else
        return s.discard(off, len);
}
template <typename S>
decltype(auto) call_write_zeroes(S& s, context_for<S>& c, std::uint64_t off, std::uint64_t len) {
    if constexpr (requires { s.write_zeroes(c, off, len); })
        return s.write_zeroes(c, off, len);
    else
        return s.write_zeroes(off, len);
}
template <typename S>
decltype(auto) call_secure_erase(S& s, context_for<S>& c, std::uint64_t off, std::uint64_t len) {
    if constexpr (requires { s.secure_erase(c, off, len); })
        return s.secure_erase(c, off, len);
    else
        return s.secure_erase(off, len);
}

} // namespace detail

} // namespace dmuser
