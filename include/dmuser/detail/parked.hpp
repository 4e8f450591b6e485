// dmuser/detail/parked.hpp: a coroutine parked in a queue until another one, on any
// thread, lets it go; it resumes on its own ring. The waiting half of the async locks
// (async_mutex.hpp, async_semaphore.hpp, range_lock.hpp).
#pragma once

#include "dmuser/ring.hpp"

#include <coroutine>
#include <stdexcept>
#include <string>

namespace dmuser::detail {

struct parked : completion {
    std::coroutine_handle<> waiter;
    ring* home = nullptr;
    parked* next_parked = nullptr;

    // On the awaiting coroutine's thread, before it joins a queue.
    void park(std::coroutine_handle<> h, const char* who) {
        home = ring::current();
        if (!home)
            throw std::logic_error(std::string(who) + " awaited on a thread without a ring");
        waiter = h;
        on_complete = &resume;
        home->expect_hand_off();
    }
    // From any thread, once it has left the queue: it resumes in a later turn of its ring.
    void let_go() noexcept { home->hand_off(*this); }

private:
    static void resume(completion* c) noexcept { static_cast<parked*>(c)->waiter.resume(); }
};

// First come, first served; intrusive, so waiting allocates nothing.
class parked_queue {
public:
    bool empty() const noexcept { return !head_; }
    parked* front() const noexcept { return head_; }
    void push(parked& p) noexcept {
        p.next_parked = nullptr;
        (tail_ ? tail_->next_parked : head_) = &p;
        tail_ = &p;
    }
    parked* pop() noexcept {
        parked* p = head_;
        if (p) {
            head_ = p->next_parked;
            if (!head_)
                tail_ = nullptr;
        }
        return p;
    }
    // Removes p, which follows prev (null: p is the front).
    void remove_after(parked* prev, parked& p) noexcept {
        (prev ? prev->next_parked : head_) = p.next_parked;
        if (tail_ == &p)
            tail_ = prev;
    }

private:
    parked* head_ = nullptr;
    parked* tail_ = nullptr;
};

} // namespace dmuser::detail
