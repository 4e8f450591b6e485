// dmuser/filters/cache.hpp: an LRU cache of the inner store's blocks, in memory, for a slow
// or remote store. Reads of cached blocks never reach the inner store.
//  - write_through (default): a write goes to the inner store, then updates the blocks
//    cached; nothing is ever only in memory.
//  - write_back: a write lands in the cache (a partial block is read first) and reaches the
//    inner store on flush, on FUA, or when dirty blocks pass half the capacity. A flush
//    answers only once every dirty block is written and the inner store has flushed: what
//    the kernel was told is durable, is.
//
//   dmuser::filters::cache fast{remote{...}, {.capacity = 256 << 20, .write_back = true}};
//
// Requests that touch the same blocks are served one after another (a range_lock); others
// go on together. Write-backs run one at a time, each writing a copy of the blocks taken
// under the lock, so a newer version of a block is never overtaken by an older one. Discard,
// write-zeroes and erase write back what is dirty, drop the blocks they touch, and go to the
// inner store.
#pragma once

#include "dmuser/async_mutex.hpp"
#include "dmuser/filters/forwarding.hpp"
#include "dmuser/filters/op_kind.hpp"
#include "dmuser/range_lock.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace dmuser::filters {

struct cache_options {
    std::uint64_t capacity = 64u << 20; // bytes of blocks kept
    std::uint64_t block = 64u << 10;    // a power of two, at least 512
    bool write_back = false;
};

template <BlockStore Inner>
class cache : public forwarding<Inner> {
public:
    using typename forwarding<Inner>::context;

    cache(Inner inner, cache_options o)
        : forwarding<Inner>(std::move(inner)), o_(o), s_(std::make_unique<state>()) {
        if (o_.block < 512 || (o_.block & (o_.block - 1)))
            throw std::invalid_argument(
                "cache filter: the block size must be a power of two, at least 512");
        if (o_.capacity < o_.block)
            throw std::invalid_argument("cache filter: the capacity must hold at least one block");
        size_ = this->inner.size();
    }

    struct counters {
        std::uint64_t hits = 0, misses = 0, written_back = 0, cached = 0, dirty = 0;
    };
    counters stats() const {
        std::lock_guard lock(s_->m);
        counters c = s_->counts;
        c.cached = s_->lru.size();
        c.dirty = s_->dirty;
        return c;
    }

    static constexpr bool fills_reads = true;
    void read_view(std::uint64_t, std::uint64_t) = delete;
    void write_view(std::uint64_t, std::uint64_t) = delete;

    task<std::error_code> read(context& c, std::uint64_t off, std::span<std::byte> out) {
        auto held = co_await lock(off, out.size());
        std::vector<std::byte> fill;
        for (std::uint64_t b = off / o_.block; b * o_.block < off + out.size(); ++b) {
            const auto [from, to] = piece(b, off, out.size());
            if (copy_out(b, from, out.subspan(b * o_.block + from - off, to - from)))
                continue;
            if (auto ec = co_await load(c, b, fill))
                co_return ec;
            // From the block just read: it may already have been evicted again.
            std::memcpy(out.data() + (b * o_.block + from - off), fill.data() + from, to - from);
        }
        co_return std::error_code{};
    }

    task<std::error_code> write(context& c, std::uint64_t off, std::span<const std::byte> in) {
        auto held = co_await lock(off, in.size());
        if (!o_.write_back) {
            std::error_code ec = co_await await_result(
                [&] { return dmuser::detail::call_write(this->inner, c, off, in); });
            update(off, in, ec);
            co_return ec;
        }
        std::vector<std::byte> fill;
        for (std::uint64_t b = off / o_.block; b * o_.block < off + in.size(); ++b) {
            const auto [from, to] = piece(b, off, in.size());
            const auto part = in.subspan(b * o_.block + from - off, to - from);
            if (copy_in(b, from, part))
                continue;
            if (from != 0 || to != block_bytes(b)) { // a partial block: read the rest first
                if (auto ec = co_await load(c, b, fill))
                    co_return ec;
            } else {
                fill.resize(block_bytes(b));
            }
            std::memcpy(fill.data() + from, part.data(), part.size());
            insert(b, fill, /*dirty=*/true);
        }
        bool over;
        {
            std::lock_guard lock(s_->m);
            over = s_->dirty * o_.block > o_.capacity / 2;
        }
        held.release();
        if (over)
            co_return co_await write_back(c);
        co_return std::error_code{};
    }

    task<std::error_code> write_fua(context& c, std::uint64_t off, std::span<const std::byte> in) {
        if (auto ec = co_await write(c, off, in))
            co_return ec;
        co_return co_await flush(c);
    }

    task<std::error_code> flush(context& c) {
        if (o_.write_back)
            if (auto ec = co_await write_back(c))
                co_return ec;
        if constexpr (has_flush<Inner>)
            co_return co_await await_result(
                [&] { return dmuser::detail::call_flush(this->inner, c); });
        co_return std::error_code{};
    }

    task<std::error_code> discard(context& c, std::uint64_t off,
                                  std::uint64_t len) requires has_discard<Inner> {
        co_return co_await dropping(
            c, off, len, [&] { return dmuser::detail::call_discard(this->inner, c, off, len); });
    }
    task<std::error_code> write_zeroes(context& c, std::uint64_t off,
                                       std::uint64_t len) requires has_write_zeroes<Inner> {
        co_return co_await dropping(c, off, len, [&] {
            return dmuser::detail::call_write_zeroes(this->inner, c, off, len);
        });
    }
    task<std::error_code> secure_erase(context& c, std::uint64_t off,
                                       std::uint64_t len) requires has_secure_erase<Inner> {
        co_return co_await dropping(c, off, len, [&] {
            return dmuser::detail::call_secure_erase(this->inner, c, off, len);
        });
    }

private:
    struct entry {
        std::uint64_t block;
        std::vector<std::byte> data;
        bool dirty = false;
        bool writing = false; // a write-back has a copy on its way: not to be evicted
    };
    struct state {
        mutable std::mutex m; // guards all below; never held across an await
        std::list<entry> lru; // most recent first
        std::unordered_map<std::uint64_t, typename std::list<entry>::iterator> index;
        std::uint64_t dirty = 0;
        counters counts;
        range_lock ranges;       // requests on the same blocks, one after another
        async_mutex write_backs; // one write-back at a time
    };

    std::uint64_t block_bytes(std::uint64_t b) const {
        return std::min<std::uint64_t>(o_.block, size_ - b * o_.block);
    }
    // The part of block b that [off, off + len) covers, as offsets within the block.
    std::pair<std::uint64_t, std::uint64_t> piece(std::uint64_t b, std::uint64_t off,
                                                  std::uint64_t len) const {
        const std::uint64_t start = b * o_.block;
        return {std::max(off, start) - start, std::min(off + len, start + block_bytes(b)) - start};
    }
    auto lock(std::uint64_t off, std::uint64_t len) {
        const std::uint64_t first = off / o_.block * o_.block;
        const std::uint64_t end = (off + len + o_.block - 1) / o_.block * o_.block;
        return s_->ranges.lock(first, end - first);
    }

    // Under m: the entry for b, made most recent, or null.
    entry* find(std::uint64_t b) {
        auto it = s_->index.find(b);
        if (it == s_->index.end())
            return nullptr;
        s_->lru.splice(s_->lru.begin(), s_->lru, it->second);
        return &*it->second;
    }
    bool copy_out(std::uint64_t b, std::uint64_t from, std::span<std::byte> out) {
        std::lock_guard lock(s_->m);
        entry* e = find(b);
        if (!e)
            return false;
        std::memcpy(out.data(), e->data.data() + from, out.size());
        ++s_->counts.hits;
        return true;
    }
    bool copy_in(std::uint64_t b, std::uint64_t from, std::span<const std::byte> in) {
        std::lock_guard lock(s_->m);
        entry* e = find(b);
        if (!e)
            return false;
        std::memcpy(e->data.data() + from, in.data(), in.size());
        if (!std::exchange(e->dirty, true))
            ++s_->dirty;
        return true;
    }
    // Write-through: the cached copies of what was written; a failed write leaves the inner
    // store's bytes unknown, so they are dropped.
    void update(std::uint64_t off, std::span<const std::byte> in, std::error_code ec) {
        std::lock_guard lock(s_->m);
        for (std::uint64_t b = off / o_.block; b * o_.block < off + in.size(); ++b) {
            auto it = s_->index.find(b);
            if (it == s_->index.end())
                continue;
            if (ec) {
                s_->lru.erase(it->second);
                s_->index.erase(it);
                continue;
            }
            const auto [from, to] = piece(b, off, in.size());
            std::memcpy(it->second->data.data() + from, in.data() + (b * o_.block + from - off),
                        to - from);
        }
    }
    // Block b with `data` (a whole block), most recent; replaces what is cached of it.
    void insert(std::uint64_t b, std::span<const std::byte> data, bool dirty) {
        std::lock_guard lock(s_->m);
        if (entry* e = find(b)) {
            e->data.assign(data.begin(), data.end());
            if (dirty && !std::exchange(e->dirty, true))
                ++s_->dirty;
            return;
        }
        s_->lru.push_front(
            entry{b, std::vector<std::byte>(data.begin(), data.end()), dirty, false});
        s_->index[b] = s_->lru.begin();
        if (dirty)
            ++s_->dirty;
        // Evict the least recent clean blocks; dirty ones wait for their write-back.
        auto it = s_->lru.end();
        while (s_->lru.size() * o_.block > o_.capacity && it != s_->lru.begin()) {
            --it;
            if (it->dirty || it->writing || it->block == b)
                continue;
            s_->index.erase(it->block);
            it = s_->lru.erase(it);
        }
    }
    // Block b from the inner store into the cache.
    task<std::error_code> load(context& c, std::uint64_t b, std::vector<std::byte>& buf) {
        buf.resize(block_bytes(b));
        const std::span<std::byte> s(buf);
        std::error_code ec = co_await await_result(
            [&] { return dmuser::detail::call_read(this->inner, c, b * o_.block, s); });
        if (ec)
            co_return ec;
        {
            std::lock_guard lock(s_->m);
            ++s_->counts.misses;
        }
        insert(b, buf, false);
        co_return std::error_code{};
    }

    // Writes every dirty block to the inner store (copies taken under the lock).
    task<std::error_code> write_back(context& c) {
        auto one_at_a_time = co_await s_->write_backs.scoped_lock();
        std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> batch;
        {
            std::lock_guard lock(s_->m);
            for (entry& e : s_->lru)
                if (e.dirty) {
                    batch.emplace_back(e.block, e.data);
                    e.dirty = false;
                    e.writing = true;
                }
            s_->dirty = 0;
        }
        std::error_code first_error;
        std::vector<std::uint64_t> failed;
        for (auto& [b, data] : batch) {
            const std::span<const std::byte> s(data);
            std::error_code ec = co_await await_result(
                [&] { return dmuser::detail::call_write(this->inner, c, b * o_.block, s); });
            if (ec) {
                failed.push_back(b);
                if (!first_error)
                    first_error = ec;
            }
        }
        std::lock_guard lock(s_->m);
        for (auto& [b, data] : batch) {
            auto it = s_->index.find(b);
            if (it == s_->index.end())
                continue;
            it->second->writing = false;
            const bool lost = std::find(failed.begin(), failed.end(), b) != failed.end();
            if (lost && !std::exchange(it->second->dirty, true))
                ++s_->dirty; // still only here: the next flush tries again
        }
        s_->counts.written_back += batch.size() - failed.size();
        co_return first_error;
    }

    template <typename Call>
    task<std::error_code> dropping(context& c, std::uint64_t off, std::uint64_t len, Call call) {
        auto held = co_await lock(off, len);
        if (o_.write_back)
            if (auto ec = co_await write_back(c))
                co_return ec;
        {
            std::lock_guard lock(s_->m);
            for (std::uint64_t b = off / o_.block; b * o_.block < off + len; ++b)
                if (auto it = s_->index.find(b); it != s_->index.end()) {
                    if (it->second->dirty)
                        --s_->dirty;
                    s_->lru.erase(it->second);
                    s_->index.erase(it);
                }
        }
        co_return co_await await_result(std::move(call));
    }

    cache_options o_;
    std::unique_ptr<state> s_; // locks do not move; the filter does
    std::uint64_t size_ = 0;
};
template <typename Inner>
cache(Inner, cache_options) -> cache<Inner>;

} // namespace dmuser::filters
