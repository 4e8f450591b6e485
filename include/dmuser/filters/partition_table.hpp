// dmuser/filters/partition_table.hpp: where partition N of a disk image lies, from its MBR
// or GPT (512-byte sectors), for the offset filter:
//
//   auto part = filters::offset{std::move(disk), filters::partition(disk_ref, 2)};
//
// partition() reads the table through the store's own read(), on a ring of its own, so it
// runs before the server starts (on the thread that builds the stack).
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/filters/offset.hpp"
#include "dmuser/filters/op_kind.hpp"
#include "dmuser/ring.hpp"
#include "dmuser/task.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace dmuser::filters {

namespace detail {

inline std::uint64_t little_endian(std::span<const std::byte> b, std::size_t at, std::size_t n) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i)
        v |= std::uint64_t(std::to_integer<unsigned>(b[at + i])) << (8 * i);
    return v;
}

// Reads `out` at `off` from `store` to completion, on a ring made for it.
template <BlockStore S>
void read_now(S& store, std::uint64_t off, std::span<std::byte> out) {
    ring r(8);
    auto run = [&]() -> task<std::error_code> {
        if constexpr (std::is_void_v<thread_state_t<S>>) {
            request_context<> ctx;
            co_return co_await await_result(
                [&] { return dmuser::detail::call_read(store, ctx, off, out); });
        } else {
            std::optional<thread_state_t<S>> state_holder;
            if constexpr (has_open_thread<S>)
                state_holder.emplace(store.open_thread(0));
            else
                state_holder.emplace();
            context_for<S> ctx(request_info{}, *state_holder);
            co_return co_await await_result(
                [&] { return dmuser::detail::call_read(store, ctx, off, out); });
        }
    };
    if (std::error_code ec = r.run(run()))
        throw std::system_error(ec, "reading the partition table");
}

} // namespace detail

// Partition `number` (from 1) of the MBR or GPT disk in `store`; throws std::invalid_argument
// with the reason if there is none.
template <BlockStore S>
window partition(S& store, unsigned number) {
    using detail::little_endian;
    const std::uint64_t disk = store.size();
    auto fail = [&](const std::string& why) -> window {
        throw std::invalid_argument("partition " + std::to_string(number) + ": " + why);
    };
    if (number == 0)
        return fail("partitions are numbered from 1");
    std::vector<std::byte> head(1024);
    if (disk < head.size())
        return fail("the disk is too small for a partition table");
    detail::read_now(store, 0, head);
    const std::span<const std::byte> mbr(head.data(), 512);
    if (little_endian(mbr, 510, 2) != 0xaa55)
        return fail("no MBR signature");
    auto checked = [&](std::uint64_t first_sector, std::uint64_t sectors) -> window {
        if (sectors == 0 || first_sector * 512 + sectors * 512 > disk)
            return fail("its extent lies outside the disk");
        return window{first_sector * 512, sectors * 512};
    };
    bool gpt = false;
    for (unsigned i = 0; i < 4; ++i)
        gpt |= std::to_integer<unsigned>(mbr[446 + 16 * i + 4]) == 0xee;
    if (!gpt) {
        if (number > 4)
            return fail("an MBR has 4 primary partitions (logical ones are not read)");
        const std::size_t e = 446 + 16 * (number - 1);
        if (std::to_integer<unsigned>(mbr[e + 4]) == 0)
            return fail("unused in the MBR");
        return checked(little_endian(mbr, e + 8, 4), little_endian(mbr, e + 12, 4));
    }
    const std::span<const std::byte> header(head.data() + 512, 512);
    if (std::memcmp(header.data(), "EFI PART", 8) != 0)
        return fail("a protective MBR but no GPT header");
    const std::uint64_t entries_lba = little_endian(header, 72, 8);
    const std::uint64_t entries = little_endian(header, 80, 4);
    const std::uint64_t entry_size = little_endian(header, 84, 4);
    if (number > entries)
        return fail("the GPT has " + std::to_string(entries) + " entries");
    if (entry_size < 128 || entry_size > 4096)
        return fail("the GPT's entry size is not plausible");
    const std::uint64_t at = entries_lba * 512 + (number - 1) * entry_size;
    if (at + entry_size > disk)
        return fail("the GPT entry lies outside the disk");
    std::vector<std::byte> entry(entry_size);
    detail::read_now(store, at, entry);
    bool used = false;
    for (std::size_t i = 0; i < 16; ++i)
        used |= entry[i] != std::byte{0};
    if (!used)
        return fail("unused in the GPT");
    const std::uint64_t first = little_endian(entry, 32, 8), last = little_endian(entry, 40, 8);
    if (last < first)
        return fail("its GPT entry ends before it starts");
    return checked(first, last - first + 1);
}

} // namespace dmuser::filters
