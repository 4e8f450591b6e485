// chunk_codec.hpp: one chunk of a compressed image in and out of its stored form (zstd or lz4,
// raw when compression does not pay, nothing for zeros), with its CRC-32C checked on the way in.
// One codec object per thread: it owns the compression contexts.
#pragma once

#include "crc32c.hpp"
#include "image_format.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <lz4.h>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>
#include <zstd.h>

namespace dmuser::examples {

class ChunkCodec {
public:
    // `level`: zstd's level (ignored by lz4).
    explicit ChunkCodec(Codec codec, int level = 3) : codec_(codec), level_(level) {}

    Codec codec() const { return codec_; }

    // Stores `in` into `out`; fills the entry's kind, stored_size and crc (not its offset).
    ChunkEntry encode(std::span<const std::byte> in, std::vector<std::byte>& out) {
        ChunkEntry e{};
        out.clear();
        if (std::all_of(in.begin(), in.end(), [](std::byte b) { return b == std::byte{0}; })) {
            e.kind = ChunkKind::zero;
            e.crc = crc32c({});
            return e;
        }
        std::size_t n = 0;
        if (codec_ == Codec::zstd) {
            out.resize(ZSTD_compressBound(in.size()));
            if (!cctx_)
                cctx_.reset(ZSTD_createCCtx());
            n = ZSTD_compressCCtx(cctx_.get(), out.data(), out.size(), in.data(), in.size(),
                                  level_);
            if (ZSTD_isError(n))
                n = 0;
        } else {
            out.resize(LZ4_compressBound(static_cast<int>(in.size())));
            n = static_cast<std::size_t>(
                std::max(0, LZ4_compress_default(reinterpret_cast<const char*>(in.data()),
                                                 reinterpret_cast<char*>(out.data()),
                                                 static_cast<int>(in.size()),
                                                 static_cast<int>(out.size()))));
        }
        if (n == 0 || n >= in.size()) {
            out.assign(in.begin(), in.end());
            e.kind = ChunkKind::raw;
        } else {
            out.resize(n);
            e.kind = ChunkKind::compressed;
        }
        e.stored_size = static_cast<std::uint32_t>(out.size());
        e.crc = crc32c(out);
        return e;
    }

    // Turns the stored bytes of a chunk back into its raw bytes (`out` is exactly the chunk's
    // length). EBADMSG with `why` set when the checksum or the decompression disagrees.
    std::error_code decode(const ChunkEntry& e, std::span<const std::byte> stored,
                           std::span<std::byte> out, std::string& why) {
        auto bad = [&](std::string msg) {
            why = std::move(msg);
            return std::make_error_code(std::errc::bad_message);
        };
        if (e.kind == ChunkKind::zero) {
            std::fill(out.begin(), out.end(), std::byte{0});
            return {};
        }
        if (stored.size() != e.stored_size)
            return bad(
                fmt::format("short read: {} of {} stored bytes", stored.size(), e.stored_size));
        if (const auto crc = crc32c(stored); crc != e.crc)
            return bad(
                fmt::format("checksum mismatch (crc32c {:08x}, index says {:08x})", crc, e.crc));
        if (e.kind == ChunkKind::raw) {
            if (stored.size() != out.size())
                return bad("raw chunk of the wrong length");
            std::copy(stored.begin(), stored.end(), out.begin());
            return {};
        }
        if (codec_ == Codec::zstd) {
            if (!dctx_)
                dctx_.reset(ZSTD_createDCtx());
            const auto n = ZSTD_decompressDCtx(dctx_.get(), out.data(), out.size(), stored.data(),
                                               stored.size());
            if (ZSTD_isError(n))
                return bad(fmt::format("zstd: {}", ZSTD_getErrorName(n)));
            if (n != out.size())
                return bad(fmt::format("zstd gave {} bytes, expected {}", n, out.size()));
        } else {
            const int n = LZ4_decompress_safe(
                reinterpret_cast<const char*>(stored.data()), reinterpret_cast<char*>(out.data()),
                static_cast<int>(stored.size()), static_cast<int>(out.size()));
            if (n < 0 || static_cast<std::size_t>(n) != out.size())
                return bad(fmt::format("lz4 gave {} bytes, expected {}", n, out.size()));
        }
        return {};
    }

private:
    struct FreeCCtx {
        void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
    };
    struct FreeDCtx {
        void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
    };

    Codec codec_;
    int level_;
    std::unique_ptr<ZSTD_CCtx, FreeCCtx> cctx_;
    std::unique_ptr<ZSTD_DCtx, FreeDCtx> dctx_;
};

} // namespace dmuser::examples
