// The filters (include/dmuser/filters/): each one through the real server and the fake
// kernel, their composition in code (capabilities and per-thread state pass through), and
// partition tables.
#include "server_fixture.hpp"

#include <dmuser/filters/any_store.hpp>
#include <dmuser/filters/cache.hpp>
#include <dmuser/filters/delay.hpp>
#include <dmuser/filters/error.hpp>
#include <dmuser/filters/offset.hpp>
#include <dmuser/filters/partition_table.hpp>
#include <dmuser/filters/read_only.hpp>
#include <dmuser/filters/retry.hpp>
#include <dmuser/filters/stats.hpp>
#include <dmuser/serve_device.hpp>
#include <fcntl.h>
#include <unistd.h>

namespace filters = dmuser::filters;
using dmuser::task;
using dmuser::testing::fake_kernel;
using dmuser::testing::fake_options;
using filters::op_kind;
using test::pattern;
using test::running_server;
using namespace std::chrono_literals;

namespace {

// A movable memory store with every optional member, for stacks built by value.
struct owned_store {
    std::shared_ptr<test::mem_store> m;
    explicit owned_store(std::size_t bytes) : m(std::make_shared<test::mem_store>(bytes)) {}
    std::uint64_t size() const { return m->size(); }
    void read(std::uint64_t off, std::span<std::byte> out) { m->read(off, out); }
    void write(std::uint64_t off, std::span<const std::byte> in) { m->write(off, in); }
    void flush() { m->flush(); }
    void discard(std::uint64_t off, std::uint64_t len) { m->discard(off, len); }
};

fake_options sized(std::uint64_t bytes) {
    fake_options o;
    o.device_bytes = bytes;
    return o;
}

} // namespace

TEST_CASE("filters compose in code, and what the inner store can do passes through") {
    using stack = filters::error<filters::delay<owned_store>>;
    static_assert(dmuser::BlockStore<stack>);
    static_assert(dmuser::has_flush<stack> && dmuser::has_discard<stack>);
    static_assert(!dmuser::has_secure_erase<stack> && !dmuser::has_write_zeroes<stack>);
    static_assert(!dmuser::has_read_view<stack>); // it would go around the filters

    owned_store base(1 << 20);
    auto shared = base.m;
    filters::error top{filters::delay{std::move(base), filters::delay_options{}},
                       filters::error_options{.rate = 1.0, .ops = filters::op_set::none()}};
    fake_kernel k(sized(top.size()));
    running_server s(top, k);
    auto data = pattern(8192, 1);
    CHECK(k.write(4096, data).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(4096, 8192).data == data);
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
    CHECK(shared->flushes == 1);
    CHECK(k.op(DM_USER_REQ_MAP_DISCARD, 4096, 4096).result == DM_USER_RESP_SUCCESS);
    CHECK(k.op(DM_USER_REQ_MAP_SECURE_ERASE, 0, 4096).result == DM_USER_RESP_UNSUPPORTED);
    CHECK(s.stop() == 0);
    CHECK(k.violations().empty());
}

namespace {
struct stateful_store : test::mem_store {
    struct thread_state {
        int n = 0;
    };
    using mem_store::mem_store;
    stateful_store(stateful_store&& o) : mem_store(o.mem.size()) {}
    void read(dmuser::request_context<thread_state>& c, std::uint64_t off,
              std::span<std::byte> out) {
        ++c.state.n;
        mem_store::read(off, out);
    }
};
} // namespace

TEST_CASE("a filter over a store with per-thread state has that state too") {
    using stack = filters::stats<filters::retry<stateful_store>>;
    static_assert(std::is_same_v<dmuser::thread_state_t<stack>, stateful_store::thread_state>);
    stack top{filters::retry{stateful_store(1 << 20), filters::retry_options{}},
              filters::stats_options{.file = "/dev/null"}};
    fake_kernel k(sized(1 << 20));
    running_server s(top, k);
    CHECK(k.read(0, 4096).result == DM_USER_RESP_SUCCESS);
    CHECK(s.stop() == 0);
    CHECK(top.of(op_kind::read).latency.count() == 1);
}

TEST_CASE("read_only: writes are refused and the device is made read-only") {
    filters::read_only ro{owned_store(1 << 20)};
    static_assert(dmuser::read_only_store<decltype(ro)>);
    static_assert(!dmuser::has_discard<decltype(ro)> && dmuser::has_flush<decltype(ro)>);
    CHECK(dmuser::table_for(ro, {.name = "ro"}).read_only);
    fake_kernel k(sized(1 << 20));
    running_server s(ro, k);
    CHECK(k.write(0, pattern(4096, 2)).result == DM_USER_RESP_ERROR);
    CHECK(k.op(DM_USER_REQ_MAP_DISCARD, 0, 4096).result == DM_USER_RESP_UNSUPPORTED);
    CHECK(k.read(0, 4096).data == std::vector<std::byte>(4096));
    CHECK(s.stop() == 0);
}

TEST_CASE("offset: a window of the inner store, and bad windows are refused") {
    owned_store base(4 << 20);
    auto shared = base.m;
    filters::offset win{std::move(base), filters::window{.offset = 1 << 20, .length = 2 << 20}};
    CHECK(win.size() == (2u << 20));
    fake_kernel k(sized(win.size()));
    running_server s(win, k);
    auto data = pattern(4096, 3);
    CHECK(k.write(0, data).result == DM_USER_RESP_SUCCESS);
    CHECK(k.write(4096, data).result == DM_USER_RESP_SUCCESS);
    CHECK(k.op(DM_USER_REQ_MAP_DISCARD, 0, 4096).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read((2 << 20) - 4096, 8192).result == DM_USER_RESP_ERROR); // past the window
    CHECK(s.stop() == 0);
    // The server's threads are joined: their writes are ours to read. Window offset 4096
    // is the store's 1 MiB + 4096; window offset 0 was discarded.
    CHECK(std::memcmp(shared->mem.data() + (1 << 20) + 4096, data.data(), 4096) == 0);
    CHECK(shared->mem[1 << 20] == std::byte{0});
    CHECK(shared->mem[(1 << 20) - 1] == std::byte{0});
    CHECK_THROWS_AS(filters::offset(owned_store(1 << 20), filters::window{.offset = 2 << 20}),
                    std::invalid_argument);
    CHECK_THROWS_AS(
        filters::offset(owned_store(1 << 20), filters::window{.offset = 0, .length = 2 << 20}),
        std::invalid_argument);
    CHECK_THROWS_AS(filters::offset(owned_store(1 << 20), filters::window{.offset = 100}),
                    std::invalid_argument);
}

namespace {
void put_le(std::vector<std::byte>& m, std::size_t at, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i)
        m[at + i] = std::byte((v >> (8 * i)) & 0xff);
}
} // namespace

TEST_CASE("partition: MBR and GPT entries become windows; missing ones are named") {
    owned_store mbr(8 << 20);
    auto& m = mbr.m->mem;
    put_le(m, 510, 0xaa55, 2);
    put_le(m, 446 + 16 + 4, 0x83, 1);  // partition 2: Linux
    put_le(m, 446 + 16 + 8, 4096, 4);  // from sector 4096 (2 MiB)
    put_le(m, 446 + 16 + 12, 2048, 4); // 1 MiB long
    auto w = filters::partition(mbr, 2);
    CHECK(w.offset == (2u << 20));
    CHECK(w.length == (1u << 20));
    CHECK_THROWS_WITH(filters::partition(mbr, 1), Catch::Contains("unused"));
    CHECK_THROWS_WITH(filters::partition(mbr, 5), Catch::Contains("4 primary"));

    owned_store gpt(8 << 20);
    auto& g = gpt.m->mem;
    put_le(g, 510, 0xaa55, 2);
    put_le(g, 446 + 4, 0xee, 1); // protective MBR
    std::memcpy(g.data() + 512, "EFI PART", 8);
    put_le(g, 512 + 72, 2, 8);   // entries at LBA 2
    put_le(g, 512 + 80, 128, 4); // 128 entries
    put_le(g, 512 + 84, 128, 4); // of 128 bytes
    const std::size_t e2 = 2 * 512 + 128;
    g[e2] = std::byte{1};        // a type GUID: used
    put_le(g, e2 + 32, 6144, 8); // first LBA
    put_le(g, e2 + 40, 8191, 8); // last LBA, inclusive
    auto p = filters::partition(gpt, 2);
    CHECK(p.offset == 6144u * 512);
    CHECK(p.length == 2048u * 512);
    CHECK_THROWS_WITH(filters::partition(gpt, 1), Catch::Contains("unused in the GPT"));
    put_le(g, e2 + 40, 999999, 8);
    CHECK_THROWS_WITH(filters::partition(gpt, 2), Catch::Contains("outside the disk"));
    owned_store blank(1 << 20);
    CHECK_THROWS_WITH(filters::partition(blank, 1), Catch::Contains("no MBR"));
}

TEST_CASE("delay: the chosen operations wait at least their time, the others do not") {
    filters::delay slow{
        owned_store(1 << 20),
        filters::delay_options{}.on(op_kind::read, 30ms).on(op_kind::flush, 1ms, 3ms)};
    fake_kernel k(sized(1 << 20));
    running_server s(slow, k);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(k.read(0, 4096).result == DM_USER_RESP_SUCCESS);
    CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
    CHECK(k.write(0, pattern(4096, 4)).result == DM_USER_RESP_SUCCESS);
    CHECK(s.stop() == 0);
}

TEST_CASE("error: failures by operation, byte range, chance and trigger file") {
    SECTION("op and range") {
        filters::error e{
            owned_store(1 << 20),
            filters::error_options{.ops = filters::op_set::none(), .from = 8192, .to = 16384}};
        (void)e;
        filters::error_options o{.from = 8192, .to = 16384};
        o.ops = filters::op_set::none();
        o.ops.add(op_kind::write);
        filters::error f{owned_store(1 << 20), o};
        fake_kernel k(sized(1 << 20));
        running_server s(f, k);
        CHECK(k.write(0, pattern(8192, 5)).result == DM_USER_RESP_SUCCESS);     // before the range
        CHECK(k.write(12288, pattern(4096, 5)).result == DM_USER_RESP_ERROR);   // inside
        CHECK(k.write(4096, pattern(8192, 5)).result == DM_USER_RESP_ERROR);    // overlapping
        CHECK(k.write(16384, pattern(4096, 5)).result == DM_USER_RESP_SUCCESS); // after
        CHECK(k.read(12288, 4096).result == DM_USER_RESP_SUCCESS);              // not a write
        CHECK(f.injected() == 2);
        CHECK(s.stop() == 0);
    }
    SECTION("chance, seeded") {
        filters::error f{owned_store(1 << 20), filters::error_options{.rate = 0.5, .seed = 7}};
        fake_kernel k(sized(1 << 20));
        running_server s(f, k);
        int failed = 0;
        for (int i = 0; i < 200; ++i)
            failed += k.read(0, 512).result == DM_USER_RESP_ERROR;
        CHECK(failed > 50);
        CHECK(failed < 150);
        CHECK(s.stop() == 0);
    }
    SECTION("trigger file") {
        char path[] = "/tmp/dmuser-trigger-XXXXXX";
        int fd = ::mkstemp(path);
        REQUIRE(fd >= 0);
        ::close(fd);
        ::unlink(path);
        filters::error f{owned_store(1 << 20), filters::error_options{.trigger = path}};
        fake_kernel k(sized(1 << 20));
        running_server s(f, k);
        CHECK(k.read(0, 512).result == DM_USER_RESP_SUCCESS);
        fd = ::open(path, O_CREAT | O_WRONLY, 0600);
        ::close(fd);
        CHECK(k.read(0, 512).result == DM_USER_RESP_ERROR);
        ::unlink(path);
        CHECK(k.read(0, 512).result == DM_USER_RESP_SUCCESS);
        CHECK(s.stop() == 0);
    }
}

namespace {
// Fails each operation's first `failures` tries.
struct flaky_store : owned_store {
    int failures;
    std::shared_ptr<std::atomic<int>> tries = std::make_shared<std::atomic<int>>(0);
    flaky_store(std::size_t bytes, int f) : owned_store(bytes), failures(f) {}
    std::error_code write(std::uint64_t off, std::span<const std::byte> in) {
        if (++*tries % (failures + 1) != 0)
            return std::make_error_code(std::errc::io_error);
        owned_store::write(off, in);
        return {};
    }
    std::error_code discard(std::uint64_t, std::uint64_t) {
        ++*tries;
        return std::make_error_code(std::errc::operation_not_supported);
    }
};
} // namespace

TEST_CASE("retry: a failed operation is tried again; UNSUPPORTED is final") {
    flaky_store base(1 << 20, 2);
    auto tries = base.tries;
    filters::retry r{std::move(base), filters::retry_options{.attempts = 3, .backoff = 100us}};
    fake_kernel k(sized(1 << 20));
    running_server s(r, k);
    CHECK(k.write(0, pattern(4096, 6)).result == DM_USER_RESP_SUCCESS);
    CHECK(*tries == 3);
    CHECK(r.retried() == 1);
    CHECK(r.recovered() == 1);
    CHECK(k.op(DM_USER_REQ_MAP_DISCARD, 0, 4096).result == DM_USER_RESP_UNSUPPORTED);
    CHECK(*tries == 4);
    CHECK(s.stop() == 0);

    flaky_store worse(1 << 20, 5);
    filters::retry r2{std::move(worse), filters::retry_options{.attempts = 3, .backoff = 100us}};
    fake_kernel k2(sized(1 << 20));
    running_server s2(r2, k2);
    CHECK(k2.write(0, pattern(4096, 6)).result == DM_USER_RESP_ERROR);
    CHECK(r2.recovered() == 0);
    CHECK(s2.stop() == 0);
}

TEST_CASE("stats: counts, bytes, errors and latency per operation") {
    filters::stats st{owned_store(1 << 20), filters::stats_options{.file = "/dev/null"}};
    fake_kernel k(sized(1 << 20));
    running_server s(st, k);
    for (int i = 0; i < 10; ++i)
        CHECK(k.write(std::uint64_t(i) * 4096, pattern(4096, i)).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(0, 8192).result == DM_USER_RESP_SUCCESS);
    CHECK(s.stop() == 0);
    CHECK(st.of(op_kind::write).latency.count() == 10);
    CHECK(st.of(op_kind::write).bytes == 40960);
    CHECK(st.of(op_kind::read).bytes == 8192);
    CHECK(st.of(op_kind::write).latency.percentile(0.5) <= st.of(op_kind::write).latency.max());
    const std::string t = st.table();
    CHECK(t.find("write") != std::string::npos);
    CHECK(t.find("discard") == std::string::npos); // not seen, not listed
}

TEST_CASE("latency_histogram: percentiles within a factor of two, max exact") {
    dmuser::latency_histogram h;
    CHECK(h.percentile(0.5).count() == 0);
    for (int i = 1; i <= 100; ++i)
        h.record(std::chrono::microseconds(i));
    CHECK(h.count() == 100);
    CHECK(h.max() == 100us);
    auto p50 = h.percentile(0.5), p99 = h.percentile(0.99);
    CHECK(p50 >= 50us / 2);
    CHECK(p50 <= 50us * 2);
    CHECK(p99 >= 99us / 2);
    CHECK(p99 <= 100us);
}

TEST_CASE("any_store: a stack chosen at run time tells the table what it can do") {
    test::mem_store base(1 << 20);
    auto any = filters::any_store::referring_to(base);
    auto caps = any.capabilities();
    CHECK(caps.flush);
    CHECK(caps.discard);
    CHECK_FALSE(caps.secure_erase);
    filters::any_store ro(filters::read_only<filters::any_store>(std::move(any)));
    CHECK(ro.capabilities().read_only);
    CHECK_FALSE(ro.capabilities().discard);
    auto table = dmuser::table_for(ro, {.name = "x"});
    CHECK(table.read_only);
    CHECK(table.no_discard);
    fake_kernel k(sized(1 << 20));
    running_server s(ro, k);
    CHECK(k.write(0, pattern(512, 1)).result == DM_USER_RESP_ERROR);
    CHECK(k.op(DM_USER_REQ_MAP_WRITE_ZEROES, 0, 4096).result == DM_USER_RESP_ERROR);
    CHECK(k.read(0, 512).result == DM_USER_RESP_SUCCESS);
    CHECK(s.stop() == 0);
}

namespace {
// Counts the inner store's operations; fails writes while `fail_writes` is set.
struct counted_store : owned_store {
    std::shared_ptr<std::atomic<int>> reads = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<std::atomic<int>> writes = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<std::atomic<bool>> fail_writes = std::make_shared<std::atomic<bool>>(false);
    using owned_store::owned_store;
    void read(std::uint64_t off, std::span<std::byte> out) {
        ++*reads;
        owned_store::read(off, out);
    }
    std::error_code write(std::uint64_t off, std::span<const std::byte> in) {
        if (*fail_writes)
            return std::make_error_code(std::errc::io_error);
        ++*writes;
        owned_store::write(off, in);
        return {};
    }
};
} // namespace

TEST_CASE("cache, write-through: reads of cached blocks stay in memory, writes go through") {
    counted_store base(1 << 20);
    auto reads = base.reads, writes = base.writes;
    auto mem = base.m;
    filters::cache c{std::move(base),
                     filters::cache_options{.capacity = 256 << 10, .block = 64 << 10}};
    fake_kernel k(sized(1 << 20));
    running_server s(c, k);
    CHECK(k.write(4096, pattern(4096, 1)).result == DM_USER_RESP_SUCCESS);
    CHECK(*writes == 1);
    CHECK(k.read(0, 8192).data.size() == 8192);
    CHECK(*reads == 1);                                 // the block came in
    CHECK(k.read(4096, 4096).data == pattern(4096, 1)); // from memory
    CHECK(*reads == 1);
    CHECK(k.write(4096, pattern(4096, 2)).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(4096, 4096).data == pattern(4096, 2)); // the cached copy was updated
    CHECK(*reads == 1);
    for (int b = 1; b <= 5; ++b) // 5 more blocks through a 4-block cache: block 0 goes
        CHECK(k.read(std::uint64_t(b) << 16, 512).result == DM_USER_RESP_SUCCESS);
    CHECK(c.stats().cached <= 4);
    const int before = *reads;
    CHECK(k.read(4096, 4096).data == pattern(4096, 2));
    CHECK(*reads == before + 1);
    CHECK(k.op(DM_USER_REQ_MAP_DISCARD, 0, 65536).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(4096, 4096).data == std::vector<std::byte>(4096)); // dropped, read again
    CHECK(s.stop() == 0);
}

TEST_CASE("cache, write-back: writes stay in memory until a flush, FUA, or half the capacity") {
    counted_store base(1 << 20);
    auto writes = base.writes, reads = base.reads;
    auto fail = base.fail_writes;
    auto mem = base.m;
    filters::cache c{
        std::move(base),
        filters::cache_options{.capacity = 512 << 10, .block = 64 << 10, .write_back = true}};
    fake_kernel k(sized(1 << 20));
    running_server s(c, k);
    CHECK(k.write(0, pattern(65536, 1)).result == DM_USER_RESP_SUCCESS);         // a whole block
    CHECK(*reads == 0);                                                          // nothing to read
    CHECK(k.write(65536 + 512, pattern(512, 2)).result == DM_USER_RESP_SUCCESS); // partial
    CHECK(*reads == 1);
    CHECK(*writes == 0);
    CHECK(k.read(65536 + 512, 512).data == pattern(512, 2));
    CHECK(c.stats().dirty == 2);
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
    CHECK(*writes == 2);
    CHECK(c.stats().dirty == 0);
    CHECK(k.write(4096, pattern(512, 3), DM_USER_REQ_MAP_FLAG_FUA).result == DM_USER_RESP_SUCCESS);
    CHECK(*writes == 3);
    // A write-back that fails keeps the block dirty, and the flush says so; the next one writes it.
    CHECK(k.write(8192, pattern(512, 4)).result == DM_USER_RESP_SUCCESS);
    *fail = true;
    CHECK(k.flush().result == DM_USER_RESP_ERROR);
    CHECK(c.stats().dirty == 1);
    *fail = false;
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
    CHECK(c.stats().dirty == 0);
    // Past half the capacity (4 blocks of 8), dirty blocks are written back by themselves.
    for (int b = 2; b < 8; ++b)
        CHECK(k.write(std::uint64_t(b) << 16, pattern(65536, b)).result == DM_USER_RESP_SUCCESS);
    CHECK(c.stats().dirty <= 4);
    CHECK(s.stop() == 0);
    CHECK(std::memcmp(mem->mem.data() + 8192, pattern(512, 4).data(), 512) == 0);
}

TEST_CASE("cache: random reads, writes, flushes and discards agree with a model, both modes") {
    for (bool write_back : {false, true}) {
        owned_store base(2 << 20);
        auto mem = base.m;
        filters::cache c{std::move(base), filters::cache_options{.capacity = 256 << 10,
                                                                 .block = 16 << 10,
                                                                 .write_back = write_back}};
        fake_kernel k(sized(2 << 20));
        running_server s(c, k, {.threads = 2, .channels = 2});
        std::vector<std::byte> model(2 << 20);
        unsigned x = 12345;
        auto next = [&] { return x = x * 1103515245u + 12345u; };
        for (int i = 0; i < 400; ++i) {
            const std::uint64_t off = (next() >> 4) % ((2 << 20) / 512 - 64) * 512;
            const std::uint64_t len = 512 * (1 + (next() >> 7) % 64);
            switch ((next() >> 9) % 8) {
            case 0:
                CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
                break;
            case 1:
                CHECK(k.op(DM_USER_REQ_MAP_DISCARD, off, len).result == DM_USER_RESP_SUCCESS);
                std::memset(model.data() + off, 0, len);
                break;
            case 2:
            case 3:
            case 4: {
                auto data = pattern(len, i);
                CHECK(k.write(off, data).result == DM_USER_RESP_SUCCESS);
                std::memcpy(model.data() + off, data.data(), len);
                break;
            }
            default: {
                auto r = k.read(off, len);
                REQUIRE(r.result == DM_USER_RESP_SUCCESS);
                CHECK(std::memcmp(r.data.data(), model.data() + off, len) == 0);
            }
            }
        }
        CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
        CHECK(s.stop() == 0);
        CHECK(mem->mem == model); // after a flush, the store holds it all
    }
}
