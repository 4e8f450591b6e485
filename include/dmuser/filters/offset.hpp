// dmuser/filters/offset.hpp: a window of the inner store: bytes [offset, offset + length)
// of it, as a store of its own (the server refuses requests past `length`). Or partition N
// of an MBR or GPT disk, found by reading its partition table (partition_table.hpp).
//
//   dmuser::filters::offset part{disk_store{...}, {.offset = 1 << 20, .length = 64 << 20}};
#pragma once

#include "dmuser/filters/forwarding.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace dmuser::filters {

struct window {
    std::uint64_t offset = 0;
    std::uint64_t length = 0; // 0: to the end of the inner store
};

template <BlockStore Inner>
struct offset : forwarding<Inner> {
    using typename forwarding<Inner>::context;

    offset(Inner inner, window w) : forwarding<Inner>(std::move(inner)), w_(w) {
        const std::uint64_t inner_size = this->inner.size();
        if (w_.offset > inner_size)
            throw std::invalid_argument("offset filter: the window starts past the store's end (" +
                                        std::to_string(inner_size) + " bytes)");
        if (w_.length == 0)
            w_.length = inner_size - w_.offset;
        if (w_.length > inner_size - w_.offset)
            throw std::invalid_argument("offset filter: the window ends past the store's end (" +
                                        std::to_string(inner_size) + " bytes)");
        if (w_.offset % 512 || w_.length % 512)
            throw std::invalid_argument("offset filter: the window must be in whole sectors");
    }
    const window& bounds() const noexcept { return w_; }

    std::uint64_t size() { return w_.length; }
    decltype(auto) read(context& c, std::uint64_t off, std::span<std::byte> out) {
        return forwarding<Inner>::read(c, w_.offset + off, out);
    }
    decltype(auto) write(context& c, std::uint64_t off, std::span<const std::byte> in) {
        return forwarding<Inner>::write(c, w_.offset + off, in);
    }
    decltype(auto) write_fua(context& c, std::uint64_t off,
                             std::span<const std::byte> in) requires has_write_fua<Inner> {
        return forwarding<Inner>::write_fua(c, w_.offset + off, in);
    }
    decltype(auto) discard(context& c, std::uint64_t off,
                           std::uint64_t len) requires has_discard<Inner> {
        return forwarding<Inner>::discard(c, w_.offset + off, len);
    }
    decltype(auto) write_zeroes(context& c, std::uint64_t off,
                                std::uint64_t len) requires has_write_zeroes<Inner> {
        return forwarding<Inner>::write_zeroes(c, w_.offset + off, len);
    }
    decltype(auto) secure_erase(context& c, std::uint64_t off,
                                std::uint64_t len) requires has_secure_erase<Inner> {
        return forwarding<Inner>::secure_erase(c, w_.offset + off, len);
    }
    std::span<const std::byte> read_view(std::uint64_t off,
                                         std::uint64_t len) requires has_read_view<Inner> {
        return this->inner.read_view(w_.offset + off, len);
    }
    std::span<std::byte> write_view(std::uint64_t off,
                                    std::uint64_t len) requires has_write_view<Inner> {
        return this->inner.write_view(w_.offset + off, len);
    }

private:
    window w_;
};
template <typename Inner>
offset(Inner, window) -> offset<Inner>;

} // namespace dmuser::filters
