// chunk_cache.hpp: a small LRU cache of decompressed chunks, keyed by chunk number. Not
// thread-safe: each event-loop thread keeps its own, so no lock is taken on the read path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace dmuser::examples {

class ChunkCache {
public:
    explicit ChunkCache(std::size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

    // The cached chunk, now the most recently used; nullptr on a miss. The pointer stays valid
    // until the next insert().
    const std::vector<std::byte>* find(std::uint64_t chunk) {
        auto it = where_.find(chunk);
        if (it == where_.end()) {
            ++misses_;
            return nullptr;
        }
        ++hits_;
        lru_.splice(lru_.begin(), lru_, it->second);
        return &it->second->data;
    }

    // A buffer to decode chunk `chunk` into, already in the cache as most recently used (the
    // least recently used entry's memory is reused when the cache is full). Call drop() if the
    // decode fails, so that a corrupt chunk never looks cached.
    std::vector<std::byte>& insert(std::uint64_t chunk, std::size_t length) {
        if (auto it = where_.find(chunk); it != where_.end()) {
            lru_.splice(lru_.begin(), lru_, it->second);
            it->second->data.resize(length);
            return it->second->data;
        }
        if (where_.size() >= capacity_) {
            auto victim = std::prev(lru_.end());
            where_.erase(victim->chunk);
            victim->chunk = chunk;
            lru_.splice(lru_.begin(), lru_, victim);
        } else {
            lru_.push_front(Entry{chunk, {}});
        }
        where_[chunk] = lru_.begin();
        lru_.front().data.resize(length);
        return lru_.front().data;
    }

    void drop(std::uint64_t chunk) {
        if (auto it = where_.find(chunk); it != where_.end()) {
            lru_.erase(it->second);
            where_.erase(it);
        }
    }

    std::size_t size() const { return where_.size(); }
    std::size_t capacity() const { return capacity_; }
    std::uint64_t hits() const { return hits_; }
    std::uint64_t misses() const { return misses_; }

private:
    struct Entry {
        std::uint64_t chunk;
        std::vector<std::byte> data;
    };
    std::size_t capacity_;
    std::list<Entry> lru_; // most recently used first
    std::unordered_map<std::uint64_t, std::list<Entry>::iterator> where_;
    std::uint64_t hits_ = 0, misses_ = 0;
};

} // namespace dmuser::examples
