// libFuzzer target: the SDK's protocol decoding (include/dmuser/protocol.hpp) against an
// independent restatement of the wire ABI (/work/shared/spec/dm-user-abi.md, "Messages").
// The input is a run of 40-byte headers, each followed by 16 bytes of limits (maximum
// payload, store size); every header is decoded, re-encoded, answered and checked, and
// every field must mean what the ABI says the bytes mean. Under ASan, nothing may read
// past the input: each header is copied to a buffer of exactly 40 bytes first.
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dmuser/protocol.hpp>
#include <memory>
#include <string_view>

namespace {

// --- the ABI, restated without the SDK or <linux/dm-user.h> ---------------------------
// "Every request and every response starts with the same 40-byte header, all fields
// little-endian (native) __u64, no padding": seq, type, flags, sector, len.
constexpr std::size_t abi_header_bytes = 40;
enum abi_field { abi_seq, abi_type, abi_flags, abi_sector, abi_len };

std::uint64_t abi_u64(const unsigned char* p, abi_field f) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) // little-endian: byte 0 is the least significant
        v = (v << 8) | p[f * 8 + i];
    return v;
}

// "Operations: READ 0, WRITE 1, ... ZONE_RESET_ALL 12"; above 12 nothing is defined.
constexpr std::array<std::string_view, 13> abi_ops = {
    "READ",        "WRITE",        "FLUSH",          "DISCARD",    "SECURE_ERASE",
    "WRITE_SAME",  "WRITE_ZEROES", "ZONE_OPEN",      "ZONE_CLOSE", "ZONE_FINISH",
    "ZONE_APPEND", "ZONE_RESET",   "ZONE_RESET_ALL",
};
constexpr std::uint64_t abi_read = 0, abi_write = 1;
// "a payload: the data of a WRITE request (len bytes) ... No other message carries one."
bool abi_request_carries_payload(std::uint64_t type) {
    return type == abi_write;
}
// Results: "0 SUCCESS, 1 ERROR, 2 UNSUPPORTED".
constexpr std::uint64_t abi_results[] = {0, 1, 2};

// What a daemon can serve: a defined type, a READ or WRITE no longer than the maximum
// payload, a range of 512-byte sectors inside the store. Computed in 128 bits, so no
// sector or length can wrap around.
bool abi_servable(std::uint64_t type, std::uint64_t sector, std::uint64_t len,
                  std::uint64_t max_payload, std::uint64_t store_bytes) {
    if (type >= abi_ops.size())
        return false;
    if ((type == abi_read || type == abi_write) && len > max_payload)
        return false;
    unsigned __int128 end = static_cast<unsigned __int128>(sector) * 512 + len;
    return end <= store_bytes;
}

[[noreturn]] void mismatch(const char* what, std::uint64_t got, std::uint64_t want) {
    std::fprintf(stderr, "fuzz_protocol: %s: SDK says %#llx, the ABI %#llx\n", what,
                 static_cast<unsigned long long>(got), static_cast<unsigned long long>(want));
    std::abort();
}
void expect(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_protocol: %s\n", what);
        std::abort();
    }
}

void check_one(const unsigned char* wire, std::uint64_t max_payload, std::uint64_t store_bytes) {
    // Exactly 40 bytes on the heap, so ASan reports any read past the header.
    auto bytes = std::make_unique<std::byte[]>(dmuser::header_size);
    std::memcpy(bytes.get(), wire, dmuser::header_size);
    std::span<const std::byte, dmuser::header_size> header(bytes.get(), dmuser::header_size);
    const unsigned char* raw = reinterpret_cast<const unsigned char*>(bytes.get());

    dmuser::request req = dmuser::decode_header(header);
    if (req.seq != abi_u64(raw, abi_seq))
        mismatch("seq", req.seq, abi_u64(raw, abi_seq));
    if (req.type != abi_u64(raw, abi_type))
        mismatch("type", req.type, abi_u64(raw, abi_type));
    if (req.flags != abi_u64(raw, abi_flags))
        mismatch("flags", req.flags, abi_u64(raw, abi_flags));
    if (req.sector != abi_u64(raw, abi_sector))
        mismatch("sector", req.sector, abi_u64(raw, abi_sector));
    if (req.len != abi_u64(raw, abi_len))
        mismatch("len", req.len, abi_u64(raw, abi_len));
    expect(req.payload.empty(), "a decoded header carries a payload");
    if (req.offset() != req.sector * 512)
        mismatch("offset", req.offset(), req.sector * 512);
    expect(req.carries_payload() == abi_request_carries_payload(req.type),
           "carries_payload disagrees with the ABI");
    for (unsigned bit = 0; bit < 64; ++bit) {
        std::uint64_t flag = std::uint64_t{1} << bit;
        expect(req.has(flag) == ((abi_u64(raw, abi_flags) & flag) != 0), "has(flag)");
    }

    // Names: the ABI's, or UNKNOWN above the last defined type.
    std::string_view name = dmuser::type_name(req.type);
    expect(name == (req.type < abi_ops.size() ? abi_ops[req.type] : "UNKNOWN"), "type_name");
    expect(!dmuser::describe(req).empty(), "describe");

    // Encoding the request gives back the very bytes.
    std::array<std::byte, dmuser::header_size> again{};
    dmuser::encode_request(again, req);
    expect(std::memcmp(again.data(), raw, dmuser::header_size) == 0,
           "encode_request(decode_header(b)) != b");

    // A response: seq of the request, type the result, all little-endian u64.
    for (std::uint64_t r : abi_results) {
        std::array<std::byte, dmuser::header_size> resp{};
        dmuser::encode_response(resp, req, static_cast<dmuser::result>(r));
        const auto* out = reinterpret_cast<const unsigned char*>(resp.data());
        if (abi_u64(out, abi_seq) != req.seq)
            mismatch("response seq", abi_u64(out, abi_seq), req.seq);
        if (abi_u64(out, abi_type) != r)
            mismatch("response result", abi_u64(out, abi_type), r);
        // Decoding our own response reads the same fields back.
        dmuser::request back = dmuser::decode_header(
            std::span<const std::byte, dmuser::header_size>(resp.data(), dmuser::header_size));
        expect(back.seq == req.seq && back.type == r, "decode_header(encode_response)");
    }

    // The server's admission check agrees with the ABI on what can be served.
    std::string_view why = dmuser::check_request(req, max_payload, store_bytes);
    bool servable = abi_servable(req.type, req.sector, req.len, max_payload, store_bytes);
    if (why.empty() != servable) {
        std::fprintf(
            stderr,
            "fuzz_protocol: check_request says '%.*s' for type %llu sector %llu len %llu "
            "(max_payload %llu, store %llu B); the ABI says %s\n",
            static_cast<int>(why.size()), why.data(), static_cast<unsigned long long>(req.type),
            static_cast<unsigned long long>(req.sector), static_cast<unsigned long long>(req.len),
            static_cast<unsigned long long>(max_payload),
            static_cast<unsigned long long>(store_bytes), servable ? "servable" : "not servable");
        std::abort();
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static_assert(dmuser::header_size == abi_header_bytes);
    // Each record: a header, then the limits it is checked against (absent: defaults).
    constexpr std::size_t record = abi_header_bytes + 16;
    while (size >= abi_header_bytes) {
        std::uint64_t max_payload = 128u << 10, store_bytes = 64u << 20;
        if (size >= record) {
            std::memcpy(&max_payload, data + abi_header_bytes, 8);
            std::memcpy(&store_bytes, data + abi_header_bytes + 8, 8);
        }
        check_one(data, max_payload, store_bytes);
        std::size_t used = size >= record ? record : abi_header_bytes;
        data += used;
        size -= used;
    }
    return 0;
}
