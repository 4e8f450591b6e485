// dmuser/device_ioctl.hpp: one device-mapper ioctl message (linux/dm-ioctl.h), packed and
// unpacked without touching the kernel, so the layout rules are unit-tested on the host.
//
// Every DM ioctl takes one buffer: a struct dm_ioctl, then a data area. For DM_TABLE_LOAD the
// data area holds dm_target_spec records, each followed by its NUL-terminated parameter string
// and padded to 8 bytes. The kernel writes its answer (status lines, target versions) back into
// the same data area, and sets DM_BUFFER_FULL_FLAG when it did not fit.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <linux/dm-ioctl.h>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dmuser::dm {

// The oldest interface version that has everything used here. The kernel accepts any request
// whose major matches and whose minor is not newer than its own, and answers with its own.
inline constexpr std::uint32_t ioctl_version[3] = {4, 0, 0};

struct target_line {
    std::uint64_t start = 0; // sectors
    std::uint64_t length = 0;
    std::string type;
    std::string params; // status line or table parameters, depending on the request
};

struct target_version {
    std::string name;
    std::uint32_t major = 0, minor = 0, patch = 0;
};

class ioctl_buffer {
public:
    static constexpr std::size_t default_data_size = 16 * 1024;

    // A request about the device called `name` ("" for requests about no device).
    explicit ioctl_buffer(std::string_view name = {}, std::size_t data_size = default_data_size)
        : name_(name) {
        reset(data_size);
    }

    // Clears everything but the name; sizes the data area to at least `data_size` bytes.
    void reset(std::size_t data_size) {
        const std::size_t size = sizeof(dm_ioctl) + align(data_size);
        if (size != size_) {
            storage_ = std::make_unique<std::byte[]>(size); // zeroed
            size_ = size;
        } else {
            std::memset(storage_.get(), 0, size_);
        }
        // The header is an object made in the buffer (a byte array provides storage for it),
        // so header() reads and writes a dm_ioctl that really lives there.
        auto& h = *::new (storage_.get()) dm_ioctl{};
        std::copy(std::begin(ioctl_version), std::end(ioctl_version), h.version);
        h.data_size = static_cast<std::uint32_t>(size_);
        h.data_start = sizeof(dm_ioctl);
        std::memcpy(h.name, name_.data(), std::min(name_.size(), sizeof(h.name) - 1));
        used_ = 0;
    }

    // After DM_BUFFER_FULL_FLAG: a buffer twice as large, to send the same request again.
    void grow() { reset(2 * (size_ - sizeof(dm_ioctl))); }

    dm_ioctl& header() { return *std::launder(reinterpret_cast<dm_ioctl*>(storage_.get())); }
    const dm_ioctl& header() const {
        return *std::launder(reinterpret_cast<const dm_ioctl*>(storage_.get()));
    }
    void* data() { return storage_.get(); }
    std::size_t size() const { return size_; }
    bool buffer_full() const { return (header().flags & DM_BUFFER_FULL_FLAG) != 0; }

    // Appends one target for DM_TABLE_LOAD. False when it does not fit (grow, then retry).
    bool add_target(std::uint64_t start, std::uint64_t length, std::string_view type,
                    std::string_view params) {
        if (type.size() >= DM_MAX_TYPE_NAME)
            return false;
        const std::size_t record = align(sizeof(dm_target_spec) + params.size() + 1);
        if (sizeof(dm_ioctl) + used_ + record > size())
            return false;
        auto* base = bytes() + sizeof(dm_ioctl) + used_;
        std::memset(base, 0, record);
        dm_target_spec spec{};
        spec.sector_start = start;
        spec.length = length;
        // On load, `next` counts from this record; on status it counts from the first record.
        spec.next = static_cast<std::uint32_t>(record);
        std::memcpy(spec.target_type, type.data(), type.size());
        std::memcpy(base, &spec, sizeof spec);
        std::memcpy(base + sizeof spec, params.data(), params.size());
        used_ += record;
        header().target_count += 1;
        return true;
    }

    // The targets of a DM_TABLE_STATUS answer, in table order. nullopt when the answer is
    // malformed (a record or string running past the buffer).
    std::optional<std::vector<target_line>> targets() const {
        std::vector<target_line> out;
        const auto& h = header();
        std::size_t offset = 0;
        for (std::uint32_t i = 0; i < h.target_count; ++i) {
            const std::size_t at = h.data_start + offset;
            if (at + sizeof(dm_target_spec) > answer_end())
                return std::nullopt;
            dm_target_spec spec;
            std::memcpy(&spec, bytes() + at, sizeof spec);
            auto params = c_string(at + sizeof spec);
            if (!params)
                return std::nullopt;
            target_line line;
            line.start = spec.sector_start;
            line.length = spec.length;
            line.type.assign(spec.target_type, strnlen(spec.target_type, DM_MAX_TYPE_NAME));
            line.params = std::move(*params);
            out.push_back(std::move(line));
            if (spec.next <= offset && i + 1 < h.target_count)
                return std::nullopt;
            offset = spec.next;
        }
        return out;
    }

    // The entries of a DM_LIST_VERSIONS answer. nullopt when malformed.
    std::optional<std::vector<target_version>> versions() const {
        std::vector<target_version> out;
        std::size_t at = header().data_start;
        if (at + sizeof(dm_target_versions) > answer_end())
            return out; // no target registered at all
        for (;;) {
            if (at + sizeof(dm_target_versions) > answer_end())
                return std::nullopt;
            dm_target_versions entry;
            std::memcpy(&entry, bytes() + at, sizeof entry);
            auto name = c_string(at + sizeof entry);
            if (!name)
                return std::nullopt;
            out.push_back({std::move(*name), entry.version[0], entry.version[1], entry.version[2]});
            if (entry.next == 0)
                return out;
            at += entry.next;
        }
    }

private:
    static std::size_t align(std::size_t n) { return (n + 7) & ~std::size_t{7}; }
    unsigned char* bytes() { return reinterpret_cast<unsigned char*>(storage_.get()); }
    const unsigned char* bytes() const {
        return reinterpret_cast<const unsigned char*>(storage_.get());
    }
    // The kernel reports how much it wrote in data_size; never trust it past our buffer.
    std::size_t answer_end() const { return std::min<std::size_t>(header().data_size, size()); }

    std::optional<std::string> c_string(std::size_t at) const {
        const std::size_t end = answer_end();
        if (at >= end)
            return std::nullopt;
        const auto* start = bytes() + at;
        const auto* nul = static_cast<const unsigned char*>(std::memchr(start, 0, end - at));
        if (!nul)
            return std::nullopt;
        return std::string(reinterpret_cast<const char*>(start), nul - start);
    }

    std::string name_;
    // new std::byte[] is aligned for any object that fits (8 for dm_target_spec's __u64s).
    std::unique_ptr<std::byte[]> storage_;
    std::size_t size_ = 0; // a multiple of 8
    std::size_t used_ = 0; // bytes of target records added
};

} // namespace dmuser::dm
