// dmuser/filters/forwarding.hpp: the base of every filter. A filter is a store that wraps
// another (`inner`) and changes only what it is for; this base forwards everything else.
// Each optional member exists here exactly when the inner store has it (a `requires` clause),
// so capabilities pass through a stack of filters: a flush, discard or per-thread state
// that the bottom store has, the top one has too. A filter hides what it changes by declaring
// a member of the same name; it removes one (e.g. read_view, which would bypass it) with
// `= delete`.
//
//   template <BlockStore Inner>
//   struct my_filter : filters::forwarding<Inner> {
//       using filters::forwarding<Inner>::forwarding;
//       task<std::error_code> read(context_for<Inner>& ctx, std::uint64_t off,
//                                  std::span<std::byte> out) { ...; this->read_inner(ctx, off, out)
//                                  }
//   };
#pragma once

#include "dmuser/block_store.hpp"

#include <cstdint>
#include <span>
#include <utility>

namespace dmuser::filters {

namespace detail {
// The inner store's per-thread state type, as the filter's own, if it has one.
template <typename Inner>
struct thread_state_of_inner {};
template <typename Inner>
requires(!std::is_void_v<thread_state_t<Inner>>) struct thread_state_of_inner<Inner> {
    using thread_state = thread_state_t<Inner>;
};
} // namespace detail

template <BlockStore Inner>
class forwarding : public detail::thread_state_of_inner<Inner> {
public:
    using inner_type = Inner;
    using context = context_for<Inner>; // the filter's context is its inner store's

    explicit forwarding(Inner inner) : inner(std::move(inner)) {}

    Inner inner;

    std::uint64_t size() { return inner.size(); }
    decltype(auto) read(context& c, std::uint64_t off, std::span<std::byte> out) {
        return dmuser::detail::call_read(inner, c, off, out);
    }
    decltype(auto) write(context& c, std::uint64_t off, std::span<const std::byte> in) {
        return dmuser::detail::call_write(inner, c, off, in);
    }
    decltype(auto) flush(context& c) requires has_flush<Inner> {
        return dmuser::detail::call_flush(inner, c);
    }
    decltype(auto) write_fua(context& c, std::uint64_t off,
                             std::span<const std::byte> in) requires has_write_fua<Inner> {
        return dmuser::detail::call_write_fua(inner, c, off, in);
    }
    decltype(auto) discard(context& c, std::uint64_t off,
                           std::uint64_t len) requires has_discard<Inner> {
        return dmuser::detail::call_discard(inner, c, off, len);
    }
    decltype(auto) write_zeroes(context& c, std::uint64_t off,
                                std::uint64_t len) requires has_write_zeroes<Inner> {
        return dmuser::detail::call_write_zeroes(inner, c, off, len);
    }
    decltype(auto) secure_erase(context& c, std::uint64_t off,
                                std::uint64_t len) requires has_secure_erase<Inner> {
        return dmuser::detail::call_secure_erase(inner, c, off, len);
    }
    std::span<const std::byte> read_view(std::uint64_t off,
                                         std::uint64_t len) requires has_read_view<Inner> {
        return inner.read_view(off, len);
    }
    std::span<std::byte> write_view(std::uint64_t off,
                                    std::uint64_t len) requires has_write_view<Inner> {
        return inner.write_view(off, len);
    }
    thread_state_t<Inner> open_thread(unsigned index) requires has_open_thread<Inner> {
        return inner.open_thread(index);
    }
    store_capabilities capabilities() const requires has_runtime_capabilities<Inner> {
        return inner.capabilities();
    }
    static constexpr bool fills_reads = dmuser::fills_reads<Inner>;
    static constexpr bool read_only_device = read_only_store<Inner>;
};

} // namespace dmuser::filters
