// dmuser/frame_allocator.hpp: recycles coroutine frames through a per-thread free list, so
// that a request's coroutine costs no malloc on the hot path once the daemon is warm.
#pragma once

#include <array>
#include <cstddef>
#include <new>

namespace dmuser {

namespace detail {

// Frames are grouped in 64-byte size classes up to 4 KiB; larger ones go to the heap.
// A freed frame joins the free list of the thread that frees it, which is sound because
// every class's blocks are interchangeable; each list is bounded so memory returns to the
// heap after a burst.
class frame_cache {
public:
    static constexpr std::size_t granule = 64;
    static constexpr std::size_t classes = 64;
    static constexpr std::size_t max_cached = 256;

    frame_cache() = default;
    frame_cache(const frame_cache&) = delete;
    frame_cache& operator=(const frame_cache&) = delete;
    ~frame_cache() {
        for (auto& list : lists_)
            while (list.head) {
                block* b = list.head;
                list.head = b->next;
                ::operator delete(b);
            }
    }

    static std::size_t class_of(std::size_t size) noexcept { return (size - 1) / granule; }

    void* allocate(std::size_t size) {
        std::size_t c = class_of(size);
        if (c >= classes)
            return ::operator new(size);
        auto& list = lists_[c];
        if (block* b = list.head) {
            list.head = b->next;
            --list.count;
            return b;
        }
        return ::operator new((c + 1) * granule);
    }

    void deallocate(void* p, std::size_t size) noexcept {
        std::size_t c = class_of(size);
        if (c >= classes || lists_[c].count >= max_cached) {
            ::operator delete(p);
            return;
        }
        auto& list = lists_[c];
        list.head = ::new (p) block{list.head};
        ++list.count;
    }

private:
    struct block {
        block* next;
    };
    struct free_list {
        block* head = nullptr;
        std::size_t count = 0;
    };
    std::array<free_list, classes> lists_{};
};

// Whether this thread's cache exists. A plain flag needs no destructor, so it can still be
// read while the thread's thread_local objects are being destroyed.
enum class frame_cache_state : unsigned char { unborn, alive, gone };
inline frame_cache_state& this_thread_frame_cache_state() noexcept {
    thread_local frame_cache_state state = frame_cache_state::unborn;
    return state;
}

// This thread's cache, or nullptr once it has been destroyed: a thread_local destroyed
// after it (made before it) may still free a frame, which must then go to the heap, not
// into a dead cache's list.
inline frame_cache* this_thread_frames() {
    if (this_thread_frame_cache_state() == frame_cache_state::gone)
        return nullptr;
    struct owned : frame_cache {
        owned() noexcept { this_thread_frame_cache_state() = frame_cache_state::alive; }
        ~owned() { this_thread_frame_cache_state() = frame_cache_state::gone; }
    };
    thread_local owned cache;
    return &cache;
}

// A frame of `size` bytes from this thread's cache, or from the heap.
inline void* allocate_frame(std::size_t size) {
    if (frame_cache* cache = this_thread_frames())
        return cache->allocate(size);
    return ::operator new(size);
}
// Back into this thread's cache, or to the heap when the cache is full or gone.
inline void deallocate_frame(void* p, std::size_t size) noexcept {
    if (frame_cache* cache = this_thread_frames())
        cache->deallocate(p, size);
    else
        ::operator delete(p);
}

} // namespace detail

// Base of a coroutine promise whose frames come from the per-thread cache.
struct frame_allocated {
#if defined(__SANITIZE_ADDRESS__)
    // Under ASan every frame comes from the heap, so a use after free is caught.
    static void* operator new(std::size_t size) {
        return ::operator new(size);
    }
    static void operator delete(void* p, std::size_t size) noexcept {
        ::operator delete(p, size);
    }
#else
    static void* operator new(std::size_t size) {
        return detail::allocate_frame(size);
    }
    static void operator delete(void* p, std::size_t size) noexcept {
        detail::deallocate_frame(p, size);
    }
#endif
};

} // namespace dmuser
