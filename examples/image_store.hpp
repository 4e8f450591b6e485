// image_store.hpp: the store of dmuser-compressed. Serves an image made by dmuser-mkimage,
// decompressing each chunk when it is first read and keeping a few in an LRU cache per thread
// and store;
// the stored bytes are read through io_uring on the request's ring. With an Overlay, writes go
// copy-on-write to it and reads take each sector from it when it has it.
#pragma once

#include "chunk_cache.hpp"
#include "chunk_codec.hpp"
#include "dmuser/file_io.hpp"
#include "dmuser/log.hpp"
#include "dmuser/ring.hpp"
#include "dmuser/task.hpp"
#include "dmuser/unique_fd.hpp"
#include "image_index.hpp"
#include "image_reader.hpp"
#include "overlay.hpp"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dmuser::examples {

class ImageStore {
public:
    ImageStore(dmuser::unique_fd image, ImageIndex index, std::size_t cache_chunks,
               std::unique_ptr<Overlay> overlay)
        : image_(std::move(image)), index_(std::move(index)), cache_chunks_(cache_chunks),
          overlay_(std::move(overlay)) {}

    std::uint64_t size() const { return (index_.image_size() + 511) / 512 * 512; }

    dmuser::task<std::error_code> read(std::uint64_t off, std::span<std::byte> out) {
        if (!overlay_)
            co_return co_await read_image(off, out);
        std::error_code ec;
        std::vector<std::pair<std::uint64_t, std::uint64_t>> runs; // sector runs
        std::vector<bool> in_overlay;
        overlay_->for_runs(off / 512, out.size() / 512, [&](auto first, auto count, bool in) {
            runs.emplace_back(first, count);
            in_overlay.push_back(in);
        });
        for (std::size_t i = 0; i < runs.size() && !ec; ++i) {
            const auto [first, count] = runs[i];
            auto part = out.subspan(first * 512 - off, count * 512);
            if (in_overlay[i])
                ec = co_await dmuser::read_at(overlay_->fd(), part,
                                              overlay_->data_offset() + first * 512);
            else
                ec = co_await read_image(first * 512, part);
        }
        co_return ec;
    }

    dmuser::task<std::error_code> write(std::uint64_t off, std::span<const std::byte> in) {
        if (!overlay_)
            co_return std::make_error_code(std::errc::read_only_file_system);
        if (auto ec = co_await dmuser::write_at(overlay_->fd(), in, overlay_->data_offset() + off))
            co_return ec;
        overlay_->mark(off / 512, in.size() / 512);
        co_return std::error_code{};
    }

    dmuser::task<std::error_code> flush() {
        if (!overlay_)
            co_return std::error_code{};
        auto snap = overlay_->snapshot();
        auto& r = dmuser::this_ring();
        if (auto got = co_await r.fdatasync(overlay_->fd()); !got.ok())
            co_return got.error();
        if (snap.pages.empty())
            co_return std::error_code{};
        if (auto ec = overlay_->write_snapshot(snap))
            co_return ec;
        co_return (co_await r.fdatasync(overlay_->fd())).error();
    }

    const ImageIndex& index() const { return index_; }
    const Overlay* overlay() const { return overlay_.get(); }

private:
    // One per store and server thread: zstd contexts are single-threaded, and a private cache
    // needs no lock on the read path. Not a thread_local of this class: that would be one per
    // thread for all the stores of a process, whose caches are keyed by chunk number alone,
    // so a second image would be served the first one's chunks.
    struct ThreadState {
        ThreadState(Codec codec, std::size_t cache_chunks) : codec(codec), cache(cache_chunks) {}
        ChunkCodec codec;
        ChunkCache cache;
    };
    ThreadState& thread_state() {
        // The thread remembers the last store it used by an id that is never reused (an
        // address can be, by a later store), so the lock is taken only when it switches.
        thread_local std::uint64_t last_store = 0;
        thread_local ThreadState* last_state = nullptr;
        if (last_store == id_)
            return *last_state;
        std::lock_guard lock(states_mutex_);
        auto& state = states_[std::this_thread::get_id()];
        if (!state)
            state = std::make_unique<ThreadState>(index_.header().codec, cache_chunks_);
        last_store = id_;
        last_state = state.get();
        return *state;
    }
    static std::uint64_t next_id() {
        static std::atomic<std::uint64_t> last{0};
        return ++last;
    }

    dmuser::task<std::error_code> read_image(std::uint64_t off, std::span<std::byte> out) {
        const std::uint64_t cs = index_.chunk_size();
        while (!out.empty()) {
            if (off >= index_.image_size()) { // the tail of the last sector
                std::memset(out.data(), 0, out.size());
                break;
            }
            const std::uint64_t chunk = off / cs, within = off % cs;
            const std::size_t n =
                std::min<std::uint64_t>(out.size(), index_.chunk_length(chunk) - within);
            auto* cached = thread_state().cache.find(chunk);
            if (!cached) {
                if (auto ec = co_await load_chunk(chunk, off))
                    co_return ec;
                cached = thread_state().cache.find(chunk);
            }
            std::memcpy(out.data(), cached->data() + within, n);
            out = out.subspan(n);
            off += n;
        }
        co_return std::error_code{};
    }

    // Reads, checks and decompresses one chunk into this thread's cache.
    dmuser::task<std::error_code> load_chunk(std::uint64_t chunk, std::uint64_t request_off) {
        const auto& e = index_.entry(chunk);
        std::vector<std::byte> stored(e.stored_size);
        if (e.stored_size) {
            auto got = co_await dmuser::this_ring().read(image_.get(), stored, e.offset);
            if (!got.ok()) {
                dmuser::log::error("{}: read failed: {}", describe_chunk(index_, chunk),
                                   got.error().message());
                co_return got.error();
            }
            stored.resize(got.bytes()); // short: the codec reports it
        }
        // No suspension from here on: the cache entry cannot be evicted under us.
        auto& st = thread_state();
        auto& out = st.cache.insert(chunk, index_.chunk_length(chunk));
        std::string why;
        if (auto ec = st.codec.decode(e, stored, out, why)) {
            st.cache.drop(chunk);
            dmuser::log::error("corrupt {}: {}; failing the read at device offset {:#x}",
                               describe_chunk(index_, chunk), why, request_off);
            co_return std::make_error_code(std::errc::io_error);
        }
        co_return std::error_code{};
    }

    dmuser::unique_fd image_;
    ImageIndex index_;
    std::size_t cache_chunks_;
    std::unique_ptr<Overlay> overlay_; // null: read-only
    const std::uint64_t id_ = next_id();
    std::mutex states_mutex_;
    // A thread id may be reused by a later thread; it then takes over a dead thread's state.
    std::unordered_map<std::thread::id, std::unique_ptr<ThreadState>> states_;
};

} // namespace dmuser::examples
