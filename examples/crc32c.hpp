// crc32c.hpp: CRC-32C (Castagnoli, the iSCSI/ext4/btrfs checksum), slice-by-8 in software.
// Debian ships no small crc32c library for C++; this one is checked against RFC 3720's vectors.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace dmuser::examples {

namespace detail {

inline constexpr std::uint32_t crc32c_poly = 0x82f63b78; // reflected 0x1edc6f41

constexpr std::array<std::array<std::uint32_t, 256>, 8> make_crc32c_tables() {
    std::array<std::array<std::uint32_t, 256>, 8> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
        std::uint32_t c = i;
        for (int k = 0; k < 8; ++k)
            c = (c >> 1) ^ ((c & 1) ? crc32c_poly : 0);
        t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
        for (std::size_t s = 1; s < 8; ++s)
            t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    return t;
}

inline constexpr auto crc32c_tables = make_crc32c_tables();

} // namespace detail

// Continues `crc` (0 to start) over `data`.
inline std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0) {
    const auto& t = detail::crc32c_tables;
    std::uint32_t c = ~crc;
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    std::size_t n = data.size();
    while (n >= 8) {
        std::uint64_t word;
        std::memcpy(&word, p, 8); // little-endian host: x86 and arm64 are
        word ^= c;
        c = t[7][word & 0xff] ^ t[6][(word >> 8) & 0xff] ^ t[5][(word >> 16) & 0xff] ^
            t[4][(word >> 24) & 0xff] ^ t[3][(word >> 32) & 0xff] ^ t[2][(word >> 40) & 0xff] ^
            t[1][(word >> 48) & 0xff] ^ t[0][word >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ t[0][(c ^ *p++) & 0xff];
    return ~c;
}

} // namespace dmuser::examples
