// dmuser/filters/intercepting.hpp: the base of the filters that act around every operation
// (delay, error, retry, stats). Each member the inner store has becomes a call of the
// filter's
//
//   task<std::error_code> intercept(op_kind op, context& ctx, std::uint64_t offset,
//                                   std::uint64_t len, Call inner_call);
//
// which decides whether, when and how often to run `co_await await_result(inner_call)`.
// read_view and write_view are not passed on: they would go around the filter.
#pragma once

#include "dmuser/filters/forwarding.hpp"
#include "dmuser/filters/op_kind.hpp"

namespace dmuser::filters {

template <typename Derived, BlockStore Inner>
struct intercepting : forwarding<Inner> {
    using forwarding<Inner>::forwarding;
    using typename forwarding<Inner>::context;

    task<std::error_code> read(context& c, std::uint64_t off, std::span<std::byte> out) {
        return self().intercept(op_kind::read, c, off, out.size(), [this, &c, off, out] {
            return dmuser::detail::call_read(this->inner, c, off, out);
        });
    }
    task<std::error_code> write(context& c, std::uint64_t off, std::span<const std::byte> in) {
        return self().intercept(op_kind::write, c, off, in.size(), [this, &c, off, in] {
            return dmuser::detail::call_write(this->inner, c, off, in);
        });
    }
    task<std::error_code> write_fua(context& c, std::uint64_t off,
                                    std::span<const std::byte> in) requires has_write_fua<Inner> {
        return self().intercept(op_kind::write, c, off, in.size(), [this, &c, off, in] {
            return dmuser::detail::call_write_fua(this->inner, c, off, in);
        });
    }
    task<std::error_code> flush(context& c) requires has_flush<Inner> {
        return self().intercept(op_kind::flush, c, 0, 0,
                                [this, &c] { return dmuser::detail::call_flush(this->inner, c); });
    }
    task<std::error_code> discard(context& c, std::uint64_t off,
                                  std::uint64_t len) requires has_discard<Inner> {
        return self().intercept(op_kind::discard, c, off, len, [this, &c, off, len] {
            return dmuser::detail::call_discard(this->inner, c, off, len);
        });
    }
    task<std::error_code> write_zeroes(context& c, std::uint64_t off,
                                       std::uint64_t len) requires has_write_zeroes<Inner> {
        return self().intercept(op_kind::write_zeroes, c, off, len, [this, &c, off, len] {
            return dmuser::detail::call_write_zeroes(this->inner, c, off, len);
        });
    }
    task<std::error_code> secure_erase(context& c, std::uint64_t off,
                                       std::uint64_t len) requires has_secure_erase<Inner> {
        return self().intercept(op_kind::secure_erase, c, off, len, [this, &c, off, len] {
            return dmuser::detail::call_secure_erase(this->inner, c, off, len);
        });
    }
    void read_view(std::uint64_t, std::uint64_t) = delete;
    void write_view(std::uint64_t, std::uint64_t) = delete;

private:
    Derived& self() { return static_cast<Derived&>(*this); }
};

} // namespace dmuser::filters
