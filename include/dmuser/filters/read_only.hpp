// dmuser/filters/read_only.hpp: the inner store, read-only. The device is made read-only
// (serve_device), so the kernel refuses writes before they reach the daemon; a write that
// comes all the same (a device made by hand) is answered ERROR, and no discard, zeroing or
// erase reaches the store.
//
//   dmuser::filters::read_only ro{file_store{...}};
#pragma once

#include "dmuser/filters/forwarding.hpp"

#include <system_error>

namespace dmuser::filters {

template <BlockStore Inner>
struct read_only : forwarding<Inner> {
    using forwarding<Inner>::forwarding;
    using typename forwarding<Inner>::context;

    static constexpr bool read_only_device = true;

    std::error_code write(context&, std::uint64_t, std::span<const std::byte>) {
        return std::make_error_code(std::errc::read_only_file_system);
    }
    void write_fua(context&, std::uint64_t, std::span<const std::byte>) = delete;
    void discard(context&, std::uint64_t, std::uint64_t) = delete;
    void write_zeroes(context&, std::uint64_t, std::uint64_t) = delete;
    void secure_erase(context&, std::uint64_t, std::uint64_t) = delete;
    void write_view(std::uint64_t, std::uint64_t) = delete;
    store_capabilities capabilities() const requires has_runtime_capabilities<Inner> {
        store_capabilities c = this->inner.capabilities();
        c.write_fua = c.discard = c.write_zeroes = c.secure_erase = false;
        c.read_only = true;
        return c;
    }
};
template <typename Inner>
read_only(Inner) -> read_only<Inner>;

} // namespace dmuser::filters
