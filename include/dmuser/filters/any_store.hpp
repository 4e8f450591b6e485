// dmuser/filters/any_store.hpp: a store whose type is chosen at run time, for filter stacks
// built from a command line (`--filter delay:read=5ms --filter error:rate=0.01`). Every
// operation is a virtual call returning a task; what the store underneath cannot do is
// answered as the SDK would answer it (no flush: success; no discard: UNSUPPORTED; no
// write_zeroes: writes of zeros; no write_fua: write, then flush), and capabilities() tells
// serve_device's table the truth. Zero-copy views and per-thread state do not cross it:
// filters typed in code keep them.
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/dispatch.hpp"
#include "dmuser/filters/op_kind.hpp"
#include "dmuser/task.hpp"

#include <memory>
#include <type_traits>
#include <utility>

namespace dmuser::filters {

class any_store {
    // Both are lazy: the flush starts only if the write succeeded.
    static task<std::error_code> write_then_flush(task<std::error_code> write,
                                                  task<std::error_code> flush) {
        if (auto ec = co_await std::move(write))
            co_return ec;
        co_return co_await std::move(flush);
    }

    struct erased {
        virtual ~erased() = default;
        virtual std::uint64_t size() = 0;
        virtual store_capabilities capabilities() const = 0;
        virtual task<std::error_code> read(request_context<>&, std::uint64_t,
                                           std::span<std::byte>) = 0;
        virtual task<std::error_code> write(request_context<>&, std::uint64_t,
                                            std::span<const std::byte>) = 0;
        virtual task<std::error_code> write_fua(request_context<>&, std::uint64_t,
                                                std::span<const std::byte>) = 0;
        virtual task<std::error_code> flush(request_context<>&) = 0;
        virtual task<std::error_code> discard(request_context<>&, std::uint64_t, std::uint64_t) = 0;
        virtual task<std::error_code> write_zeroes(request_context<>&, std::uint64_t,
                                                   std::uint64_t) = 0;
        virtual task<std::error_code> secure_erase(request_context<>&, std::uint64_t,
                                                   std::uint64_t) = 0;
    };

    // Holds S, or refers to it (Held = S&).
    template <typename Held>
    struct holder final : erased {
        using S = std::remove_reference_t<Held>;
        static_assert(std::is_void_v<thread_state_t<S>>,
                      "any_store: a store with per-thread state must be filtered in code");
        Held s;
        explicit holder(Held&& in) : s(std::forward<Held>(in)) {}

        static std::error_code unsupported() {
            return std::make_error_code(std::errc::operation_not_supported);
        }
        std::uint64_t size() override { return s.size(); }
        store_capabilities capabilities() const override {
            if constexpr (has_runtime_capabilities<S>)
                return s.capabilities();
            else
                return {has_flush<S>,        has_write_fua<S>,    has_discard<S>,
                        has_write_zeroes<S>, has_secure_erase<S>, read_only_store<S>};
        }
        // Not coroutines: each call is made at once, so no closure (which may name a type
        // of the program's own translation unit) is kept in a frame.
        task<std::error_code> read(request_context<>& c, std::uint64_t off,
                                   std::span<std::byte> out) override {
            return as_task([&] { return dmuser::detail::call_read(s, c, off, out); });
        }
        task<std::error_code> write(request_context<>& c, std::uint64_t off,
                                    std::span<const std::byte> in) override {
            return as_task([&] { return dmuser::detail::call_write(s, c, off, in); });
        }
        task<std::error_code> write_fua(request_context<>& c, std::uint64_t off,
                                        std::span<const std::byte> in) override {
            if constexpr (has_write_fua<S>)
                return as_task([&] { return dmuser::detail::call_write_fua(s, c, off, in); });
            else
                return write_then_flush(write(c, off, in), flush(c));
        }
        task<std::error_code> flush(request_context<>& c) override {
            if constexpr (has_flush<S>)
                return as_task([&] { return dmuser::detail::call_flush(s, c); });
            else
                return detail::finished({}); // no volatile cache: nothing to make durable
        }
        task<std::error_code> discard(request_context<>& c, std::uint64_t off,
                                      std::uint64_t len) override {
            if constexpr (has_discard<S>)
                return as_task([&] { return dmuser::detail::call_discard(s, c, off, len); });
            else
                return detail::finished(unsupported());
        }
        task<std::error_code> write_zeroes(request_context<>& c, std::uint64_t off,
                                           std::uint64_t len) override {
            if constexpr (has_write_zeroes<S>)
                return as_task([&] { return dmuser::detail::call_write_zeroes(s, c, off, len); });
            else
                return dmuser::detail::write_zeroes_by_writes(s, c, off, len);
        }
        task<std::error_code> secure_erase(request_context<>& c, std::uint64_t off,
                                           std::uint64_t len) override {
            if constexpr (has_secure_erase<S>)
                return as_task([&] { return dmuser::detail::call_secure_erase(s, c, off, len); });
            else
                return detail::finished(unsupported());
        }
    };

public:
    // Owns `store` (moved in).
    template <BlockStore S>
    requires(!std::is_same_v<std::remove_cvref_t<S>, any_store> &&
             !std::is_lvalue_reference_v<S>) explicit any_store(S&& store)
        : p_(std::make_unique<holder<S>>(std::move(store))) {}
    // Refers to `store`, which must outlive it.
    template <BlockStore S>
    static any_store referring_to(S& store) {
        return any_store(std::make_unique<holder<S&>>(store));
    }

    std::uint64_t size() { return p_->size(); }
    store_capabilities capabilities() const { return p_->capabilities(); }
    task<std::error_code> read(request_context<>& c, std::uint64_t off, std::span<std::byte> out) {
        return p_->read(c, off, out);
    }
    task<std::error_code> write(request_context<>& c, std::uint64_t off,
                                std::span<const std::byte> in) {
        return p_->write(c, off, in);
    }
    task<std::error_code> write_fua(request_context<>& c, std::uint64_t off,
                                    std::span<const std::byte> in) {
        return p_->write_fua(c, off, in);
    }
    task<std::error_code> flush(request_context<>& c) { return p_->flush(c); }
    task<std::error_code> discard(request_context<>& c, std::uint64_t off, std::uint64_t len) {
        return p_->discard(c, off, len);
    }
    task<std::error_code> write_zeroes(request_context<>& c, std::uint64_t off, std::uint64_t len) {
        return p_->write_zeroes(c, off, len);
    }
    task<std::error_code> secure_erase(request_context<>& c, std::uint64_t off, std::uint64_t len) {
        return p_->secure_erase(c, off, len);
    }

private:
    explicit any_store(std::unique_ptr<erased> p) : p_(std::move(p)) {}
    std::unique_ptr<erased> p_;
};

} // namespace dmuser::filters
