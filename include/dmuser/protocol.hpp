// dmuser/protocol.hpp: the wire messages of <linux/dm-user.h> as C++ values, and the
// checks every request passes before a store sees it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fmt/format.h>
#include <linux/dm-user.h>
#include <span>
#include <string>
#include <string_view>

namespace dmuser {

inline constexpr std::size_t header_size = sizeof(dm_user_message);
static_assert(header_size == 40, "the wire header is five __u64");
inline constexpr std::uint64_t sector_size = 512;

enum class op : std::uint64_t {
    read = DM_USER_REQ_MAP_READ,
    write = DM_USER_REQ_MAP_WRITE,
    flush = DM_USER_REQ_MAP_FLUSH,
    discard = DM_USER_REQ_MAP_DISCARD,
    secure_erase = DM_USER_REQ_MAP_SECURE_ERASE,
    write_same = DM_USER_REQ_MAP_WRITE_SAME,
    write_zeroes = DM_USER_REQ_MAP_WRITE_ZEROES,
};
// Highest value the ABI defines (ZONE_RESET_ALL); above it a type is malformed.
inline constexpr std::uint64_t last_defined_type = DM_USER_REQ_MAP_ZONE_RESET_ALL;

enum class result : std::uint64_t {
    success = DM_USER_RESP_SUCCESS,
    error = DM_USER_RESP_ERROR,
    unsupported = DM_USER_RESP_UNSUPPORTED,
};

inline constexpr std::string_view type_name(std::uint64_t type) {
    constexpr std::string_view names[] = {
        "READ",        "WRITE",        "FLUSH",          "DISCARD",    "SECURE_ERASE",
        "WRITE_SAME",  "WRITE_ZEROES", "ZONE_OPEN",      "ZONE_CLOSE", "ZONE_FINISH",
        "ZONE_APPEND", "ZONE_RESET",   "ZONE_RESET_ALL",
    };
    return type <= last_defined_type ? names[type] : std::string_view("UNKNOWN");
}

// A request as the kernel sent it; payload is the WRITE data (empty otherwise).
struct request {
    std::uint64_t seq = 0;
    std::uint64_t type = 0;
    std::uint64_t flags = 0;
    std::uint64_t sector = 0;
    std::uint64_t len = 0;
    std::span<const std::byte> payload;

    std::uint64_t offset() const noexcept { return sector * sector_size; }
    bool has(std::uint64_t flag) const noexcept { return (flags & flag) != 0; }
    bool carries_payload() const noexcept { return type == DM_USER_REQ_MAP_WRITE; }
};

inline request decode_header(std::span<const std::byte, header_size> bytes) noexcept {
    dm_user_message m;
    std::memcpy(&m, bytes.data(), header_size);
    return request{m.seq, m.type, m.flags, m.sector, m.len, {}};
}

// The 40 bytes of a response header. Fields the kernel ignores echo the request.
inline void encode_response(std::span<std::byte, header_size> out, const request& req,
                            result r) noexcept {
    dm_user_message m{};
    m.seq = req.seq;
    m.type = static_cast<std::uint64_t>(r);
    m.flags = 0;
    m.sector = req.sector;
    m.len = req.len;
    std::memcpy(out.data(), &m, header_size);
}

inline void encode_request(std::span<std::byte, header_size> out, const request& req) noexcept {
    dm_user_message m{};
    m.seq = req.seq;
    m.type = req.type;
    m.flags = req.flags;
    m.sector = req.sector;
    m.len = req.len;
    std::memcpy(out.data(), &m, header_size);
}

// Why a request cannot be served as it stands (empty when it can).
inline std::string_view check_request(const request& req, std::uint64_t max_payload,
                                      std::uint64_t store_size) noexcept {
    if (req.type > last_defined_type)
        return "unknown request type";
    bool sized = req.type == DM_USER_REQ_MAP_READ || req.type == DM_USER_REQ_MAP_WRITE;
    if (sized && req.len > max_payload)
        return "length over the maximum payload";
    if (req.sector > store_size / sector_size || req.len > store_size - req.offset())
        return "range beyond the end of the store";
    return {};
}

inline std::string describe(const request& req) {
    return fmt::format("seq {} {} flags {:#x} sector {} len {}", req.seq, type_name(req.type),
                       req.flags, req.sector, req.len);
}

} // namespace dmuser
