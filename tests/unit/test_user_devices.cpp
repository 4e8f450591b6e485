// The `dmuser` command's reading of DM_LIST_DEVICES (tools/user_devices.hpp), against answers
// laid out by hand as drivers/md/dm-ioctl.c's list_devices writes them: the name starts at
// offsetof(dm_name_list, name), 12, inside the struct's padding, and `next` counts from the
// record's start.
#include "user_devices.hpp"

#include <catch2/catch.hpp>
#include <cstring>

using dmuser::dm::ioctl_buffer;
using dmuser::tools::parse_name_list;

namespace {

// Writes one record at `offset` from the data start; returns the offset of the next.
std::size_t put_name(ioctl_buffer& b, std::size_t offset, std::uint64_t dev, const char* name,
                     bool last) {
    auto* at = static_cast<unsigned char*>(b.data()) + b.header().data_start + offset;
    const std::size_t size = (offsetof(dm_name_list, name) + std::strlen(name) + 1 + 7) & ~7u;
    const std::uint32_t next = last ? 0 : static_cast<std::uint32_t>(size + 8); // + event_nr, flags
    std::memcpy(at + offsetof(dm_name_list, dev), &dev, sizeof dev);
    std::memcpy(at + offsetof(dm_name_list, next), &next, sizeof next);
    std::memcpy(at + offsetof(dm_name_list, name), name, std::strlen(name) + 1);
    return offset + size + 8;
}

} // namespace

TEST_CASE("dmuser reads every name of a DM_LIST_DEVICES answer", "[tools]") {
    ioctl_buffer b;
    std::size_t end = put_name(b, 0, 0xfd00, "pkgrd", false);
    end = put_name(b, end, 0xfd01, "a-much-longer-device-name", false);
    end = put_name(b, end, 0xfd02, "x", true);
    b.header().data_size = static_cast<std::uint32_t>(b.header().data_start + end);
    CHECK(parse_name_list(b) ==
          std::vector<std::string>{"pkgrd", "a-much-longer-device-name", "x"});
}

TEST_CASE("dmuser reads no name from an empty DM_LIST_DEVICES answer", "[tools]") {
    ioctl_buffer b;
    // No devices: one zeroed record (dev 0), as the kernel leaves it.
    b.header().data_size = static_cast<std::uint32_t>(b.header().data_start + 16);
    CHECK(parse_name_list(b).empty());
}

TEST_CASE("dmuser stops at a name running past the DM_LIST_DEVICES answer", "[tools]") {
    ioctl_buffer b;
    put_name(b, 0, 0xfd00, "truncated-name", true);
    b.header().data_size = static_cast<std::uint32_t>(b.header().data_start + 16);
    CHECK(parse_name_list(b).empty());
}
