// dmuser/filters/op_kind.hpp: the operations a filter may single out (delay, error, stats,
// retry), and the helper that awaits a store member whatever it returns.
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/dispatch.hpp"
#include "dmuser/task.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace dmuser::filters {

enum class op_kind : unsigned { read, write, flush, discard, write_zeroes, secure_erase, count };
inline constexpr std::size_t op_kinds = static_cast<std::size_t>(op_kind::count);
inline constexpr std::array<std::string_view, op_kinds> op_names = {
    "read", "write", "flush", "discard", "write_zeroes", "secure_erase"};

inline std::optional<op_kind> op_from_name(std::string_view name) {
    for (std::size_t i = 0; i < op_kinds; ++i)
        if (op_names[i] == name)
            return static_cast<op_kind>(i);
    return std::nullopt;
}

// A set of operations; all of them by default.
struct op_set {
    unsigned bits = (1u << op_kinds) - 1;
    static op_set none() { return op_set{0}; }
    bool has(op_kind k) const noexcept { return bits & (1u << static_cast<unsigned>(k)); }
    void add(op_kind k) noexcept { bits |= 1u << static_cast<unsigned>(k); }
};

// A counter shared by the server's threads that moves with its filter (filters are built
// by value, inside out).
class op_counter {
public:
    op_counter() = default;
    op_counter(op_counter&& o) noexcept : n_(o.n_.load()) {}
    void add(std::uint64_t k = 1) noexcept { n_.fetch_add(k, std::memory_order_relaxed); }
    std::uint64_t get() const noexcept { return n_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> n_{0};
};

// Calls a store member at once and gives back something to co_await for its error_code,
// whatever the member returns (void and task<void>: none). Not a coroutine itself, so the
// call's closure is not kept in a frame.
template <typename Call>
auto await_result(Call&& call) {
    return dmuser::detail::invoke_store(std::forward<Call>(call));
}

namespace detail {
inline task<std::error_code> finished(std::error_code ec) {
    co_return ec;
}
inline task<std::error_code> with_no_error(task<void> t) {
    co_await std::move(t);
    co_return std::error_code{};
}
} // namespace detail

// Calls a store member at once and gives back a task of its error_code, whatever the
// member returns. Not a coroutine itself, so the call's closure is never kept in a frame.
template <typename Call>
task<std::error_code> as_task(Call&& call) {
    using R = std::invoke_result_t<Call&>;
    if constexpr (std::is_void_v<R>) {
        call();
        return detail::finished({});
    } else if constexpr (std::is_same_v<R, std::error_code>) {
        return detail::finished(call());
    } else if constexpr (std::is_same_v<R, task<void>>) {
        return detail::with_no_error(call());
    } else {
        return call();
    }
}

} // namespace dmuser::filters
