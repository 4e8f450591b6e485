// dmuser/range_lock.hpp: byte ranges a coroutine locks before it works on them, waiting
// (without blocking its thread) while another holds an overlapping range. For stores
// whose writes are read-modify-write of a larger unit (a compressed chunk, a checksum
// block): two requests on one unit must not interleave, while requests on other ranges
// go on. Shared by the server's threads; a waiter resumes on its own ring.
//
//   dmuser::range_lock locks;
//   auto held = co_await locks.lock(chunk_offset, chunk_bytes);   // released with `held`
//
// Fair: a waiter is let in only when its range overlaps neither a held range nor that of
// an earlier waiter, so a stream of overlapping lockers cannot starve it; ranges that
// overlap nothing go ahead at once. Holding costs no allocation once the table of held
// ranges has grown to the number held at once.
#pragma once

#include "dmuser/detail/parked.hpp"

#include <algorithm>
#include <coroutine>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace dmuser {

class range_lock {
    struct range {
        std::uint64_t offset = 0, len = 0;
        bool overlaps(const range& o) const noexcept {
            return offset < o.offset + o.len && o.offset < offset + len;
        }
    };
    struct held_range : range {
        std::uint64_t id;
    };

public:
    range_lock() { held_.reserve(64); }
    range_lock(const range_lock&) = delete;
    range_lock& operator=(const range_lock&) = delete;

    // Holds one range until destroyed (or moved from).
    class [[nodiscard]] guard {
    public:
        guard() noexcept = default;
        guard(range_lock& l, std::uint64_t id) noexcept : lock_(&l), id_(id) {}
        guard(guard&& o) noexcept : lock_(std::exchange(o.lock_, nullptr)), id_(o.id_) {}
        guard& operator=(guard&& o) noexcept {
            if (this != &o) {
                release();
                lock_ = std::exchange(o.lock_, nullptr);
                id_ = o.id_;
            }
            return *this;
        }
        ~guard() { release(); }
        void release() noexcept {
            if (lock_)
                std::exchange(lock_, nullptr)->unlock(id_);
        }

    private:
        range_lock* lock_ = nullptr;
        std::uint64_t id_ = 0;
    };

    class [[nodiscard]] lock_op : detail::parked {
    public:
        lock_op(range_lock& l, std::uint64_t offset, std::uint64_t len) noexcept
            : l_(l), want_{offset, len} {}
        bool await_ready() {
            std::lock_guard lock(l_.state_);
            return l_.try_take(want_, id_, nullptr);
        }
        bool await_suspend(std::coroutine_handle<> h) {
            std::lock_guard lock(l_.state_);
            if (l_.try_take(want_, id_, nullptr))
                return false;
            park(h, "dmuser::range_lock");
            l_.waiters_.push(*this);
            return true;
        }
        guard await_resume() noexcept { return guard(l_, id_); }

    private:
        friend class range_lock;
        range_lock& l_;
        range want_;
        std::uint64_t id_ = 0;
    };

    // An empty range (len 0) overlaps nothing and is granted at once.
    lock_op lock(std::uint64_t offset, std::uint64_t len) noexcept {
        return lock_op(*this, offset, len);
    }
    std::size_t held() const {
        std::lock_guard lock(state_);
        return held_.size();
    }

private:
    // Under state_: takes `want` if it overlaps no held range and no waiter before
    // `stop` (all of them when stop is null, as for a newcomer).
    bool try_take(const range& want, std::uint64_t& id, const detail::parked* stop) {
        for (const held_range& h : held_)
            if (h.overlaps(want))
                return false;
        for (detail::parked* p = waiters_.front(); p != stop; p = p->next_parked)
            if (static_cast<lock_op*>(p)->want_.overlaps(want))
                return false;
        id = ++next_id_;
        held_.push_back(held_range{want, id});
        return true;
    }
    void unlock(std::uint64_t id) noexcept {
        detail::parked_queue woken;
        {
            std::lock_guard lock(state_);
            auto it = std::find_if(held_.begin(), held_.end(),
                                   [&](const held_range& h) { return h.id == id; });
            if (it != held_.end()) {
                *it = held_.back();
                held_.pop_back();
            }
            // Let in, in order, every waiter that now overlaps nothing held or earlier.
            detail::parked* prev = nullptr;
            for (detail::parked* p = waiters_.front(); p;) {
                detail::parked* next = p->next_parked;
                auto* op = static_cast<lock_op*>(p);
                if (try_take(op->want_, op->id_, p)) {
                    waiters_.remove_after(prev, *p);
                    woken.push(*p);
                } else {
                    prev = p;
                }
                p = next;
            }
        }
        while (detail::parked* p = woken.pop())
            p->let_go();
    }

    mutable std::mutex state_; // guards held_, waiters_ and next_id_
    std::vector<held_range> held_;
    detail::parked_queue waiters_;
    std::uint64_t next_id_ = 0;
};

} // namespace dmuser
