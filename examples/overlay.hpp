// overlay.hpp: copy-on-write for a read-only image. Written sectors go to a sparse overlay file
// at their own offset; a bitmap with one bit per 512-byte sector says which sectors the overlay
// holds, and is kept in the same file. Sector granularity means a write never has to read the
// image first, and two writes to different sectors never touch the same data.
//
// Durability: a sector's bit reaches the disk only after its data has. flush() snapshots the
// bitmap pages changed so far, fdatasyncs the data, writes the snapshot, fdatasyncs again; a
// bit set after the snapshot waits for the next flush. A crash therefore loses at most writes
// that were never flushed, and never maps a sector whose data is not on disk.
#pragma once

#include "crc32c.hpp"
#include "dmuser/unique_fd.hpp"
#include "image_index.hpp"
#include "image_writer.hpp"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace dmuser::examples {

inline constexpr char overlay_magic[8] = {'D', 'M', 'U', 'O', 'V', 'L', '0', '1'};

struct OverlayHeader {
    char magic[8];
    std::uint32_t version;
    std::uint32_t sector_size; // 512: one bitmap bit per sector
    std::uint64_t device_size; // bytes
    std::uint32_t image_crc;   // header_crc of the image this overlay belongs to
    std::uint32_t reserved;    //
    std::uint64_t map_offset;  // the bitmap, map_bytes long
    std::uint64_t map_bytes;   //
    std::uint64_t data_offset; // sector s lives at data_offset + 512 * s
    std::uint32_t header_crc;  // CRC-32C of this header with header_crc = 0
    std::uint32_t reserved2;
};
static_assert(sizeof(OverlayHeader) == 64);

class Overlay {
public:
    static constexpr std::uint64_t sector = 512;
    static constexpr std::uint64_t map_page = 4096;

    // Opens `path`, or creates it when missing or empty, for a device of `device_size` bytes
    // over the image whose header checksum is `image_crc`. Throws std::runtime_error with the
    // reason when the file belongs to another image or is damaged.
    Overlay(const std::string& path, std::uint64_t device_size, std::uint32_t image_crc) {
        fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
        if (!fd_)
            throw std::runtime_error(
                fmt::format("cannot open overlay {}: {}", path, std::strerror(errno)));
        struct stat st {};
        if (::fstat(fd_.get(), &st) < 0 || !S_ISREG(st.st_mode))
            throw std::runtime_error(fmt::format("overlay {} is not a regular file", path));
        const std::uint64_t sectors = (device_size + sector - 1) / sector;
        words_count_ = (sectors + 63) / 64;
        if (st.st_size == 0)
            create(device_size, image_crc, sectors);
        else
            load(path, device_size, image_crc);
        pages_ = (h_.map_bytes + map_page - 1) / map_page;
        dirty_ = std::make_unique<std::atomic<bool>[]>(pages_);
        written_seq_.assign(pages_, 0);
    }

    Overlay(const Overlay&) = delete;
    Overlay& operator=(const Overlay&) = delete;
    // A clean shutdown leaves the map complete on disk.
    ~Overlay() {
        if (fd_ && ::fdatasync(fd_.get()) == 0 && !write_snapshot(snapshot()))
            ::fdatasync(fd_.get());
    }

    int fd() const { return fd_.get(); }
    std::uint64_t data_offset() const { return h_.data_offset; }
    std::uint64_t sectors_mapped() const {
        std::uint64_t n = 0;
        for (std::size_t i = 0; i < words_count_; ++i)
            n += static_cast<std::uint64_t>(__builtin_popcountll(words_[i].load()));
        return n;
    }

    bool has(std::uint64_t s) const {
        return (words_[s / 64].load(std::memory_order_acquire) >> (s % 64)) & 1;
    }

    // Calls f(first, count, in_overlay) for each maximal run of sectors in [first, first+count)
    // that all live in the overlay, or all in the image.
    template <typename F>
    void for_runs(std::uint64_t first, std::uint64_t count, F&& f) const {
        const std::uint64_t end = first + count;
        while (first < end) {
            const bool in = has(first);
            std::uint64_t s = first + 1;
            while (s < end && has(s) == in)
                ++s;
            f(first, s - first, in);
            first = s;
        }
    }

    // After the data of [first, first+count) is written to the overlay.
    void mark(std::uint64_t first, std::uint64_t count) {
        for (std::uint64_t s = first; s < first + count; ++s) {
            words_[s / 64].fetch_or(std::uint64_t{1} << (s % 64), std::memory_order_release);
            dirty_[page_of(s)].store(true, std::memory_order_release);
        }
    }

    // The bitmap pages changed since the last snapshot, copied now. Take it before syncing the
    // data, write it after.
    struct Snapshot {
        std::uint64_t seq = 0;
        std::vector<std::pair<std::size_t, std::vector<std::byte>>> pages;
    };
    Snapshot snapshot() {
        std::lock_guard lock(mutex_);
        Snapshot snap;
        snap.seq = ++seq_;
        for (std::size_t p = 0; p < pages_; ++p) {
            if (!dirty_[p].exchange(false, std::memory_order_acq_rel))
                continue;
            std::vector<std::byte> bytes(map_page);
            copy_page(p, bytes.data());
            snap.pages.emplace_back(p, std::move(bytes));
        }
        return snap;
    }

    // Writes a snapshot's pages (a page already written from a newer snapshot is skipped, so
    // concurrent flushes never move the map backwards). Small and rare: a blocking pwrite.
    std::error_code write_snapshot(const Snapshot& snap) {
        std::lock_guard lock(mutex_);
        for (const auto& [p, bytes] : snap.pages) {
            if (written_seq_[p] > snap.seq)
                continue;
            if (auto ec = pwrite_full(fd_.get(), bytes.data(), bytes.size(),
                                      h_.map_offset + p * map_page)) {
                for (const auto& [q, unused] : snap.pages)
                    dirty_[q].store(true); // try again at the next flush
                return ec;
            }
            written_seq_[p] = snap.seq;
        }
        return {};
    }

private:
    std::size_t page_of(std::uint64_t s) const { return (s / 8) / map_page; }

    void copy_page(std::size_t p, std::byte* out) const {
        std::memset(out, 0, map_page);
        const std::size_t first_word = p * map_page / 8;
        const std::size_t n = std::min<std::size_t>(map_page / 8, words_count_ - first_word);
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint64_t w = words_[first_word + i].load(std::memory_order_acquire);
            std::memcpy(out + i * 8, &w, 8); // little-endian, as on disk
        }
    }

    static std::uint32_t checksum(OverlayHeader h) {
        h.header_crc = 0;
        return crc32c(std::as_bytes(std::span(&h, 1)));
    }

    void create(std::uint64_t device_size, std::uint32_t image_crc, std::uint64_t sectors) {
        h_ = {};
        std::memcpy(h_.magic, overlay_magic, sizeof overlay_magic);
        h_.version = 1;
        h_.sector_size = sector;
        h_.device_size = device_size;
        h_.image_crc = image_crc;
        h_.map_offset = map_page;
        h_.map_bytes = ((sectors + 7) / 8 + map_page - 1) / map_page * map_page;
        h_.data_offset = (h_.map_offset + h_.map_bytes + (1u << 20) - 1) / (1u << 20) * (1u << 20);
        h_.header_crc = checksum(h_);
        words_ = std::make_unique<std::atomic<std::uint64_t>[]>(words_count_);
        const auto end = h_.data_offset + device_size;
        if (::ftruncate(fd_.get(), static_cast<off_t>(end)) < 0)
            throw std::runtime_error(
                fmt::format("cannot size the overlay: {}", std::strerror(errno)));
        // The empty map is the file's holes; the header makes the file an overlay.
        if (pwrite_full(fd_.get(), &h_, sizeof h_, 0) || ::fdatasync(fd_.get()) < 0)
            throw std::runtime_error("cannot write the overlay header");
    }

    void load(const std::string& path, std::uint64_t device_size, std::uint32_t image_crc) {
        if (pread_full(fd_.get(), &h_, sizeof h_, 0) != static_cast<long long>(sizeof h_) ||
            std::memcmp(h_.magic, overlay_magic, sizeof overlay_magic) != 0 ||
            h_.header_crc != checksum(h_))
            throw std::runtime_error(
                fmt::format("{} is not an overlay (or its header is damaged)", path));
        if (h_.image_crc != image_crc || h_.device_size != device_size)
            throw std::runtime_error(fmt::format(
                "overlay {} belongs to another image (made for {} bytes, image crc {:08x})", path,
                h_.device_size, h_.image_crc));
        if (h_.sector_size != sector || h_.map_bytes < words_count_ * 8 ||
            h_.data_offset < h_.map_offset + h_.map_bytes)
            throw std::runtime_error(fmt::format("overlay {} has an unexpected layout", path));
        std::vector<std::byte> map(h_.map_bytes);
        if (pread_full(fd_.get(), map.data(), map.size(), h_.map_offset) !=
            static_cast<long long>(map.size()))
            throw std::runtime_error(fmt::format("cannot read the map of overlay {}", path));
        words_ = std::make_unique<std::atomic<std::uint64_t>[]>(words_count_);
        for (std::size_t i = 0; i < words_count_; ++i) {
            std::uint64_t w = 0;
            std::memcpy(&w, map.data() + i * 8, 8);
            words_[i].store(w);
        }
    }

    dmuser::unique_fd fd_;
    OverlayHeader h_{};
    std::size_t words_count_ = 0;
    std::unique_ptr<std::atomic<std::uint64_t>[]> words_;
    std::size_t pages_ = 0;
    std::unique_ptr<std::atomic<bool>[]> dirty_;
    std::mutex mutex_; // snapshot and write_snapshot
    std::uint64_t seq_ = 0;
    std::vector<std::uint64_t> written_seq_;
};

} // namespace dmuser::examples
