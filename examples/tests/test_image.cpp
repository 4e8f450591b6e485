// The compressed image on the host: CRC-32C vectors, the LRU cache, mkimage+reader round
// trips for both codecs and several chunk sizes, and damage that must stay confined.
#include "chunk_cache.hpp"
#include "cli.hpp"
#include "crc32c.hpp"
#include "image_reader.hpp"
#include "image_store.hpp"
#include "image_writer.hpp"

#include <catch2/catch.hpp>
#include <dmuser/ring.hpp>
#include <random>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

using namespace dmuser::examples;

namespace {

std::span<const std::byte> bytes_of(std::string_view s) {
    return std::as_bytes(std::span(s));
}

struct MemFile {
    int fd = ::memfd_create("dmuser-test", MFD_CLOEXEC);
    MemFile() { REQUIRE(fd >= 0); }
    ~MemFile() { ::close(fd); }
    MemFile(const MemFile&) = delete;
    MemFile& operator=(const MemFile&) = delete;

    void write_all(std::span<const std::byte> data, std::uint64_t at = 0) const {
        REQUIRE(!pwrite_full(fd, data.data(), data.size(), at));
    }
    std::vector<std::byte> read_all(std::uint64_t at, std::size_t len) const {
        std::vector<std::byte> out(len);
        REQUIRE(pread_full(fd, out.data(), len, at) == static_cast<long long>(len));
        return out;
    }
};

// A disk-like image: zero chunks, incompressible noise, compressible text, a short tail.
std::vector<std::byte> sample_image(std::size_t size, std::uint32_t seed) {
    std::vector<std::byte> img(size);
    std::mt19937 rng(seed);
    for (std::size_t at = 0; at < size; at += 4096) {
        const std::size_t n = std::min<std::size_t>(4096, size - at);
        switch ((at / 4096 / 5) % 4) {
        case 0: // zeros
            break;
        case 1:
            for (std::size_t i = 0; i < n; ++i)
                img[at + i] = static_cast<std::byte>(rng());
            break;
        default: {
            const auto line = fmt::format("block {} of a sample file system, seed {}\n", at, seed);
            for (std::size_t i = 0; i < n; ++i)
                img[at + i] = static_cast<std::byte>(line[i % line.size()]);
        }
        }
    }
    return img;
}

ImageIndex load_index(const MemFile& f) {
    ImageIndex index;
    std::string why;
    const auto ec = ImageIndex::load(f.fd, index, why);
    INFO(why);
    REQUIRE(!ec);
    return index;
}

} // namespace

TEST_CASE("crc32c matches RFC 3720's test vectors", "[image][crc]") {
    CHECK(crc32c(bytes_of("123456789")) == 0xe3069283u);
    std::vector<std::byte> buf(32, std::byte{0});
    CHECK(crc32c(buf) == 0x8a9136aau);
    std::fill(buf.begin(), buf.end(), std::byte{0xff});
    CHECK(crc32c(buf) == 0x62a8ab43u);
    for (int i = 0; i < 32; ++i)
        buf[i] = static_cast<std::byte>(i);
    CHECK(crc32c(buf) == 0x46dd794eu);
    CHECK(crc32c({}) == 0u);
}

TEST_CASE("crc32c continues across pieces of any alignment", "[image][crc]") {
    const auto data = sample_image(10000, 7);
    const auto whole = crc32c(data);
    for (std::size_t cut : {0u, 1u, 3u, 8u, 13u, 4096u, 9999u}) {
        auto a = std::span(data).first(cut);
        auto b = std::span(data).subspan(cut);
        CHECK(crc32c(b, crc32c(a)) == whole);
    }
}

TEST_CASE("sizes and counts parse strictly", "[cli]") {
    CHECK(parse_size("4096") == 4096u);
    CHECK(parse_size("512K") == 512u << 10);
    CHECK(parse_size("256M") == 256u << 20);
    CHECK(parse_size("256MiB") == 256u << 20);
    CHECK(parse_size("2G") == 2ull << 30);
    CHECK(parse_size("1T") == 1ull << 40);
    CHECK_FALSE(parse_size(""));
    CHECK_FALSE(parse_size("M"));
    CHECK_FALSE(parse_size("12X"));
    CHECK_FALSE(parse_size("-1"));
    CHECK_FALSE(parse_size("99999999999T"));
    CHECK(parse_count("4", 1, 64) == 4u);
    CHECK_FALSE(parse_count("0", 1, 64));
    CHECK_FALSE(parse_count("4x", 1, 64));
    CHECK(human_size(256u << 20) == "256 MiB");
}

TEST_CASE("the chunk cache evicts the least recently used", "[image][cache]") {
    ChunkCache cache(2);
    cache.insert(1, 8)[0] = std::byte{1};
    cache.insert(2, 8)[0] = std::byte{2};
    REQUIRE(cache.find(1)); // 1 is now newer than 2
    cache.insert(3, 8)[0] = std::byte{3};
    CHECK(cache.size() == 2);
    CHECK_FALSE(cache.find(2));
    REQUIRE(cache.find(1));
    CHECK((*cache.find(1))[0] == std::byte{1});
    REQUIRE(cache.find(3));
    CHECK((*cache.find(3))[0] == std::byte{3});
    cache.drop(3);
    CHECK_FALSE(cache.find(3));
    CHECK(cache.size() == 1);
    CHECK(cache.hits() == 5);
    CHECK(cache.misses() == 2);
}

TEST_CASE("mkimage and the reader round-trip", "[image]") {
    const auto codec = GENERATE(Codec::zstd, Codec::lz4);
    const auto chunk_size = GENERATE(4096u, 65536u);
    const std::size_t size = 1'000'000 + 512; // not a whole number of chunks
    const auto raw = sample_image(size, chunk_size);
    MemFile in, out;
    in.write_all(raw);

    ImageOptions opt;
    opt.codec = codec;
    opt.chunk_size = chunk_size;
    ImageStats stats;
    std::string why;
    REQUIRE(!write_image(in.fd, size, out.fd, opt, stats, why));
    CHECK(stats.chunks == (size + chunk_size - 1) / chunk_size);
    CHECK(stats.zero_chunks > 0);
    CHECK(stats.file_size < size);
    if (chunk_size == 4096)
        CHECK(stats.raw_chunks > 0); // the noise blocks do not compress

    ImageReader reader(out.fd, load_index(out), 3);
    CHECK(reader.index().image_size() == size);

    std::vector<std::byte> back(size);
    REQUIRE(!reader.read(0, back, why));
    CHECK(back == raw);

    std::mt19937 rng(1);
    for (int i = 0; i < 200; ++i) {
        const std::uint64_t at = rng() % size;
        const std::size_t len = std::min<std::size_t>(rng() % 200000 + 1, size - at);
        std::vector<std::byte> part(len);
        REQUIRE(!reader.read(at, part, why));
        REQUIRE(std::equal(part.begin(), part.end(), raw.begin() + static_cast<long>(at)));
    }
    CHECK(reader.cache().hits() > 0);

    std::vector<std::byte> tail(4096, std::byte{0x55});
    REQUIRE(!reader.read(size - 100, tail, why));
    CHECK(std::equal(tail.begin(), tail.begin() + 100, raw.end() - 100));
    CHECK(
        std::all_of(tail.begin() + 100, tail.end(), [](std::byte b) { return b == std::byte{0}; }));
}

TEST_CASE("a corrupt chunk fails only its own range", "[image][corrupt]") {
    const auto codec = GENERATE(Codec::zstd, Codec::lz4);
    const std::uint32_t cs = 4096;
    const std::size_t size = 64 * cs;
    const auto raw = sample_image(size, 3);
    MemFile in, out;
    in.write_all(raw);
    ImageOptions opt;
    opt.codec = codec;
    opt.chunk_size = cs;
    ImageStats stats;
    std::string why;
    REQUIRE(!write_image(in.fd, size, out.fd, opt, stats, why));

    // Chunk 12 is compressible text, chunk 5 is noise stored raw.
    for (std::uint64_t victim : {12u, 5u}) {
        auto index = load_index(out);
        const auto e = index.entry(victim);
        REQUIRE(e.stored_size > 0);
        auto stored = out.read_all(e.offset + e.stored_size / 2, 1);
        stored[0] ^= std::byte{0x40};
        out.write_all(stored, e.offset + e.stored_size / 2);

        ImageReader reader(out.fd, std::move(index), 8);
        std::vector<std::byte> buf(cs);
        const auto ec = reader.read(victim * cs, buf, why);
        CHECK(ec == std::errc::bad_message);
        CHECK_THAT(why, Catch::Contains(fmt::format("chunk {}", victim)) &&
                            Catch::Contains(fmt::format("{:#x}", victim * cs)) &&
                            Catch::Contains(fmt::format("{:#x}", e.offset)));
        // A read spanning it fails too; its neighbours still read back right.
        std::vector<std::byte> span3(3 * cs);
        CHECK(reader.read((victim - 1) * cs, span3, why) == std::errc::bad_message);
        for (auto neighbour : {victim - 1, victim + 1}) {
            REQUIRE(!reader.read(neighbour * cs, buf, why));
            CHECK(std::equal(buf.begin(), buf.end(),
                             raw.begin() + static_cast<long>(neighbour * cs)));
        }
        // Asking again fails again: the failed chunk was not cached.
        CHECK(reader.read(victim * cs + 100, std::span(buf).first(10), why) ==
              std::errc::bad_message);

        stored[0] ^= std::byte{0x40}; // repair for the next victim
        out.write_all(stored, e.offset + e.stored_size / 2);
    }
}

TEST_CASE("a damaged header or index is refused at open", "[image][corrupt]") {
    const std::size_t size = 16 * 4096;
    const auto raw = sample_image(size, 9);
    MemFile in, out;
    in.write_all(raw);
    ImageOptions opt;
    opt.chunk_size = 4096;
    ImageStats stats;
    std::string why;
    REQUIRE(!write_image(in.fd, size, out.fd, opt, stats, why));
    const auto header = out.read_all(0, sizeof(ImageHeader));
    ImageHeader h;
    std::memcpy(&h, header.data(), sizeof h);
    ImageIndex index;

    SECTION("bad magic") {
        out.write_all(bytes_of("X"), 0);
        CHECK(ImageIndex::load(out.fd, index, why) == std::errc::invalid_argument);
        CHECK_THAT(why, Catch::Contains("magic"));
    }
    SECTION("a flipped header byte") {
        out.write_all(bytes_of("\x7f"), offsetof(ImageHeader, image_size));
        CHECK(ImageIndex::load(out.fd, index, why));
        CHECK_THAT(why, Catch::Contains("header checksum"));
    }
    SECTION("a flipped index byte") {
        out.write_all(bytes_of("\x7f"), h.index_offset + 3);
        CHECK(ImageIndex::load(out.fd, index, why) == std::errc::bad_message);
        CHECK_THAT(why, Catch::Contains("index checksum"));
    }
    SECTION("a truncated file") {
        REQUIRE(::ftruncate(out.fd, static_cast<off_t>(h.index_offset + 10)) == 0);
        CHECK(ImageIndex::load(out.fd, index, why));
        CHECK_THAT(why, Catch::Contains("truncated"));
    }
    SECTION("an empty file") {
        REQUIRE(::ftruncate(out.fd, 0) == 0);
        CHECK(ImageIndex::load(out.fd, index, why));
    }
}

TEST_CASE("a bad chunk size is refused", "[image]") {
    MemFile in, out;
    ImageOptions opt;
    ImageStats stats;
    std::string why;
    opt.chunk_size = 5000;
    CHECK(write_image(in.fd, 0, out.fd, opt, stats, why) == std::errc::invalid_argument);
    opt.chunk_size = 2048;
    CHECK(write_image(in.fd, 0, out.fd, opt, stats, why) == std::errc::invalid_argument);
}

TEST_CASE("two image stores on one thread each read their own image", "[image][store]") {
    // Same chunk numbers, different bytes: a cache shared by the stores of one thread would
    // hand the second store the first one's chunks.
    const std::size_t size = 256 * 1024;
    const auto raw_a = sample_image(size, 1), raw_b = sample_image(size, 2);
    REQUIRE(raw_a != raw_b);
    MemFile in_a, in_b, img_a, img_b;
    in_a.write_all(raw_a);
    in_b.write_all(raw_b);
    ImageOptions opt;
    opt.codec = Codec::zstd;
    opt.chunk_size = 65536;
    ImageStats stats;
    std::string why;
    REQUIRE(!write_image(in_a.fd, size, img_a.fd, opt, stats, why));
    REQUIRE(!write_image(in_b.fd, size, img_b.fd, opt, stats, why));
    ImageStore a(dmuser::unique_fd(::dup(img_a.fd)), load_index(img_a), 4, nullptr);
    ImageStore b(dmuser::unique_fd(::dup(img_b.fd)), load_index(img_b), 4, nullptr);

    dmuser::ring r;
    std::vector<std::byte> got(size);
    for (int round = 0; round < 2; ++round) { // the second round reads from the caches
        REQUIRE(!r.run(a.read(0, got)));
        CHECK((got == raw_a)); // (parenthesised: Catch2 would print both images)
        REQUIRE(!r.run(b.read(0, got)));
        CHECK((got == raw_b));
    }
}
