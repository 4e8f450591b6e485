// dispatch(): every op, the emulations, flag semantics and error mapping, on sync and
// async stores.
#include <catch2/catch.hpp>
#include <cstring>
#include <dmuser/block_store.hpp>
#include <dmuser/dispatch.hpp>
#include <dmuser/ring.hpp>
#include <stdexcept>
#include <string>
#include <vector>

using dmuser::reply;
using dmuser::request;
using dmuser::result;
using dmuser::task;

namespace {

// Records every call, so tests can check what the SDK asked of the store, in order.
struct minimal_store {
    std::vector<std::byte> mem = std::vector<std::byte>(1 << 20);
    std::vector<std::string> calls;
    std::uint64_t size() const { return mem.size(); }
    void read(std::uint64_t off, std::span<std::byte> out) {
        calls.push_back("read");
        std::memcpy(out.data(), mem.data() + off, out.size());
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        calls.push_back("write");
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
};

struct full_store : minimal_store {
    std::error_code flush() {
        calls.push_back("flush");
        return {};
    }
    std::error_code discard(std::uint64_t, std::uint64_t) {
        calls.push_back("discard");
        return {};
    }
    std::error_code write_zeroes(std::uint64_t off, std::uint64_t len) {
        calls.push_back("write_zeroes");
        std::memset(mem.data() + off, 0, len);
        return {};
    }
    std::error_code secure_erase(std::uint64_t, std::uint64_t) {
        calls.push_back("secure_erase");
        return {};
    }
};

struct fua_store : full_store {
    std::error_code write_fua(std::uint64_t off, std::span<const std::byte> in) {
        calls.push_back("write_fua");
        std::memcpy(mem.data() + off, in.data(), in.size());
        return {};
    }
};

struct view_store : minimal_store {
    std::span<const std::byte> read_view(std::uint64_t off, std::uint64_t len) {
        calls.push_back("read_view");
        return {mem.data() + off, len};
    }
};

// Completes later, on the ring: every member is a coroutine.
struct async_store {
    std::vector<std::byte> mem = std::vector<std::byte>(1 << 20);
    std::vector<std::string> calls;
    std::error_code fail_with;
    std::uint64_t size() const { return mem.size(); }
    task<std::error_code> read(std::uint64_t off, std::span<std::byte> out) {
        co_await dmuser::this_ring().timeout(std::chrono::microseconds(50));
        calls.push_back("read");
        if (fail_with)
            co_return fail_with;
        std::memcpy(out.data(), mem.data() + off, out.size());
        co_return std::error_code{};
    }
    task<std::error_code> write(std::uint64_t off, std::span<const std::byte> in) {
        co_await dmuser::this_ring().timeout(std::chrono::microseconds(50));
        calls.push_back("write");
        if (fail_with)
            co_return fail_with;
        std::memcpy(mem.data() + off, in.data(), in.size());
        co_return std::error_code{};
    }
    task<void> flush() {
        co_await dmuser::this_ring().timeout(std::chrono::microseconds(50));
        calls.push_back("flush");
    }
};

struct throwing_store : minimal_store {
    std::error_code discard(std::uint64_t, std::uint64_t) {
        throw std::runtime_error("disk on fire");
    }
};

static_assert(dmuser::BlockStore<minimal_store>);
static_assert(dmuser::BlockStore<async_store>);
static_assert(!dmuser::has_flush<minimal_store>);
static_assert(dmuser::has_flush<full_store> && dmuser::has_flush<async_store>);
static_assert(dmuser::has_write_fua<fua_store> && !dmuser::has_write_fua<full_store>);
static_assert(dmuser::has_read_view<view_store>);
struct not_a_store {
    int size() const { return 0; }
};
static_assert(!dmuser::BlockStore<not_a_store>);

request make(std::uint64_t type, std::uint64_t flags, std::uint64_t offset, std::uint64_t len,
             std::span<const std::byte> payload = {}) {
    return request{1, type, flags, offset / 512, len, payload};
}

template <typename S>
reply run(S& store, request req, std::vector<std::byte>& area) {
    dmuser::ring r;
    area.resize(std::max<std::size_t>(req.len, 1));
    return r.run(dmuser::dispatch(store, req, area));
}

std::vector<std::byte> pattern(std::size_t n, int seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i)
        v[i] = static_cast<std::byte>(i * 13 + seed);
    return v;
}

} // namespace

TEST_CASE("dispatch: READ and WRITE on a store that completes at once") {
    minimal_store s;
    std::vector<std::byte> area;
    auto data = pattern(8192, 1);
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE, 0, 4096, data.size(), data), area).status ==
          result::success);
    reply rd = run(s, make(DM_USER_REQ_MAP_READ, 0, 4096, 8192), area);
    REQUIRE(rd.status == result::success);
    CHECK(std::vector<std::byte>(rd.data.begin(), rd.data.end()) == data);
    CHECK(rd.data.data() == area.data()); // landed in the server's buffer
    CHECK(run(s, make(DM_USER_REQ_MAP_READ, 0, 0, 0), area).data.empty());
}

TEST_CASE("dispatch: async store, error codes map to ERROR and UNSUPPORTED") {
    async_store s;
    std::vector<std::byte> area;
    auto data = pattern(4096, 2);
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE, 0, 0, 4096, data), area).status == result::success);
    reply rd = run(s, make(DM_USER_REQ_MAP_READ, 0, 0, 4096), area);
    CHECK(std::vector<std::byte>(rd.data.begin(), rd.data.end()) == data);
    s.fail_with = std::make_error_code(std::errc::io_error);
    rd = run(s, make(DM_USER_REQ_MAP_READ, 0, 0, 4096), area);
    CHECK(rd.status == result::error);
    CHECK(rd.data.empty());
    s.fail_with = std::make_error_code(std::errc::operation_not_supported);
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE, 0, 0, 4096, data), area).status ==
          result::unsupported);
}

TEST_CASE("dispatch: missing optional ops answer UNSUPPORTED, flush succeeds") {
    minimal_store s;
    std::vector<std::byte> area;
    CHECK(run(s, make(DM_USER_REQ_MAP_DISCARD, 0, 0, 4096), area).status == result::unsupported);
    CHECK(run(s, make(DM_USER_REQ_MAP_SECURE_ERASE, 0, 0, 4096), area).status ==
          result::unsupported);
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE_SAME, 0, 0, 4096), area).status == result::unsupported);
    CHECK(run(s, make(DM_USER_REQ_MAP_ZONE_RESET, 0, 0, 0), area).status == result::unsupported);
    CHECK(run(s, make(DM_USER_REQ_MAP_FLUSH, 0, 0, 0), area).status == result::success);
    CHECK(s.calls.empty());
}

TEST_CASE("dispatch: optional ops reach the store") {
    full_store s;
    std::vector<std::byte> area;
    CHECK(run(s, make(DM_USER_REQ_MAP_DISCARD, 0, 0, 4096), area).status == result::success);
    CHECK(run(s, make(DM_USER_REQ_MAP_SECURE_ERASE, 0, 0, 4096), area).status == result::success);
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE_ZEROES, 0, 0, 4096), area).status == result::success);
    CHECK(run(s, make(DM_USER_REQ_MAP_FLUSH, 0, 0, 0), area).status == result::success);
    CHECK(s.calls == std::vector<std::string>{"discard", "secure_erase", "write_zeroes", "flush"});
}

TEST_CASE("dispatch: WRITE_ZEROES is emulated with writes of zeros") {
    minimal_store s;
    std::memset(s.mem.data(), 0xaa, s.mem.size());
    std::vector<std::byte> area;
    // 200 KiB: more than one 64 KiB chunk of zeros.
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE_ZEROES, 0, 4096, 200 << 10), area).status ==
          result::success);
    CHECK(s.calls.size() == 4);
    CHECK(s.mem[4095] == std::byte{0xaa});
    for (std::size_t i = 4096; i < 4096 + (200 << 10); ++i)
        REQUIRE(s.mem[i] == std::byte{0});
    CHECK(s.mem[4096 + (200 << 10)] == std::byte{0xaa});
}

TEST_CASE("dispatch: PREFLUSH is flush then write; with len 0 a pure flush") {
    full_store s;
    std::vector<std::byte> area;
    auto data = pattern(512, 3);
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_PREFLUSH, 0, 512, data), area)
              .status == result::success);
    CHECK(s.calls == std::vector<std::string>{"flush", "write"});
    s.calls.clear();
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_PREFLUSH, 0, 0), area).status ==
          result::success);
    CHECK(s.calls == std::vector<std::string>{"flush"});
}

TEST_CASE("dispatch: FUA is write then flush, or the store's native write_fua") {
    full_store s;
    std::vector<std::byte> area;
    auto data = pattern(512, 4);
    run(s, make(DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_FUA, 0, 512, data), area);
    CHECK(s.calls == std::vector<std::string>{"write", "flush"});
    fua_store f;
    run(f,
        make(DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_FUA | DM_USER_REQ_MAP_FLAG_PREFLUSH, 0,
             512, data),
        area);
    CHECK(f.calls == std::vector<std::string>{"flush", "write_fua"});
    async_store a;
    run(a, make(DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_FUA, 0, 512, data), area);
    CHECK(a.calls == std::vector<std::string>{"write", "flush"});
}

TEST_CASE("dispatch: a failed preflush stops the write") {
    struct failing_flush : minimal_store {
        std::error_code flush() { return std::make_error_code(std::errc::io_error); }
    } s;
    std::vector<std::byte> area;
    auto data = pattern(512, 5);
    CHECK(run(s, make(DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_PREFLUSH, 0, 512, data), area)
              .status == result::error);
    CHECK(s.calls.empty());
}

TEST_CASE("dispatch: read_view lends the store's memory, no copy") {
    view_store s;
    std::vector<std::byte> area;
    reply rd = run(s, make(DM_USER_REQ_MAP_READ, 0, 8192, 4096), area);
    CHECK(rd.status == result::success);
    CHECK(rd.data.data() == s.mem.data() + 8192);
    CHECK(rd.data.size() == 4096);
    CHECK(s.calls == std::vector<std::string>{"read_view"});
}

namespace {
std::string last_log;
void keep_log(dmuser::log::level, std::string_view line) {
    last_log = line;
}
} // namespace

TEST_CASE("dispatch: an exception answers ERROR and is logged with its request") {
    throwing_store s;
    std::vector<std::byte> area;
    auto old = dmuser::log::set_sink(&keep_log);
    reply rep = run(s, make(DM_USER_REQ_MAP_DISCARD, 0, 4096, 4096), area);
    dmuser::log::set_sink(old);
    CHECK(rep.status == result::error);
    CHECK(last_log.find("DISCARD") != std::string::npos);
    CHECK(last_log.find("sector 8") != std::string::npos);
    CHECK(last_log.find("disk on fire") != std::string::npos);
}

TEST_CASE("dispatch_now: READ and WRITE of a store that completes at once, else dispatch()") {
    full_store s;
    dmuser::request_context<> ctx;
    std::vector<std::byte> area(4096);
    auto data = pattern(4096, 6);
    reply rep{result::error, {}};
    REQUIRE(
        dmuser::dispatch_now(s, ctx, make(DM_USER_REQ_MAP_WRITE, 0, 8192, 4096, data), area, rep));
    CHECK(rep.status == result::success);
    std::memset(area.data(), 0xee, area.size());
    REQUIRE(dmuser::dispatch_now(s, ctx, make(DM_USER_REQ_MAP_READ, 0, 8192, 4096), area, rep));
    CHECK(rep.status == result::success);
    CHECK(rep.data.data() == area.data());
    CHECK(std::vector<std::byte>(rep.data.begin(), rep.data.end()) == data);
    CHECK(s.calls == std::vector<std::string>{"write", "read"});
    // PREFLUSH, FUA, other types and coroutine members are dispatch()'s: nothing is done.
    s.calls.clear();
    CHECK(!dmuser::dispatch_now(
        s, ctx, make(DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_PREFLUSH, 0, 512, data), area,
        rep));
    CHECK(!dmuser::dispatch_now(
        s, ctx, make(DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_FUA, 0, 512, data), area, rep));
    CHECK(!dmuser::dispatch_now(s, ctx, make(DM_USER_REQ_MAP_FLUSH, 0, 0, 0), area, rep));
    CHECK(!dmuser::dispatch_now(s, ctx, make(DM_USER_REQ_MAP_DISCARD, 0, 0, 4096), area, rep));
    CHECK(s.calls.empty());
    async_store a;
    CHECK(!dmuser::dispatch_now(a, ctx, make(DM_USER_REQ_MAP_READ, 0, 0, 4096), area, rep));
    CHECK(!dmuser::dispatch_now(a, ctx, make(DM_USER_REQ_MAP_WRITE, 0, 0, 512, data), area, rep));
    CHECK(a.calls.empty());
}

TEST_CASE("dispatch_now: a throwing store answers ERROR, as dispatch does") {
    struct throwing_reads : minimal_store {
        void read(std::uint64_t, std::span<std::byte>) { throw std::runtime_error("bad sector"); }
    } s;
    dmuser::request_context<> ctx;
    std::vector<std::byte> area(4096);
    reply rep;
    auto old = dmuser::log::set_sink(&keep_log);
    bool done = dmuser::dispatch_now(s, ctx, make(DM_USER_REQ_MAP_READ, 0, 0, 4096), area, rep);
    dmuser::log::set_sink(old);
    REQUIRE(done);
    CHECK(rep.status == result::error);
    CHECK(rep.data.empty());
    CHECK(last_log.find("bad sector") != std::string::npos);
}

TEST_CASE("check_request rejects unknown types, oversize and out-of-range requests") {
    CHECK(dmuser::check_request(make(DM_USER_REQ_MAP_READ, 0, 0, 4096), 65536, 1 << 20).empty());
    CHECK(dmuser::check_request(make(99, 0, 0, 0), 65536, 1 << 20) == "unknown request type");
    CHECK(dmuser::check_request(make(DM_USER_REQ_MAP_WRITE, 0, 0, 131072), 65536, 1 << 20) ==
          "length over the maximum payload");
    CHECK(dmuser::check_request(make(DM_USER_REQ_MAP_READ, 0, (1 << 20) - 512, 1024), 65536,
                                1 << 20) == "range beyond the end of the store");
    CHECK(dmuser::check_request(request{1, DM_USER_REQ_MAP_READ, 0, ~0ull / 2, 512, {}}, 65536,
                                1 << 20) == "range beyond the end of the store");
    // DISCARD has no payload and may exceed max_payload, not the store.
    CHECK(dmuser::check_request(make(DM_USER_REQ_MAP_DISCARD, 0, 0, 1 << 20), 65536, 1 << 20)
              .empty());
}
