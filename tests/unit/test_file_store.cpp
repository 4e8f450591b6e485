// The README's file-backed store under the server: data, flush and discard reach the file.
#include "server_fixture.hpp"
#include "stores.hpp"

using dmuser::testing::fake_kernel;

TEST_CASE("file store: writes land in the file, flush is fdatasync, discard punches") {
    fake_kernel k;
    auto store = test::make_file_store(k.options().device_bytes);
    test::running_server s(store, k);
    auto data = test::pattern(65536, 77);
    REQUIRE(k.write(1 << 20, data, DM_USER_REQ_MAP_FLAG_FUA).result == DM_USER_RESP_SUCCESS);
    std::vector<std::byte> back(data.size());
    REQUIRE(::pread(store.fd.get(), back.data(), back.size(), 1 << 20) ==
            static_cast<ssize_t>(back.size()));
    CHECK(back == data);
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
    auto disc = k.op(DM_USER_REQ_MAP_DISCARD, 1 << 20, 4096);
    if (disc.result == DM_USER_RESP_SUCCESS) {
        CHECK(k.read(1 << 20, 4096).data == std::vector<std::byte>(4096));
    } else {
        CHECK(disc.result == DM_USER_RESP_UNSUPPORTED); // EOPNOTSUPP from the filesystem
    }
    CHECK(k.read((1 << 20) + 4096, 4096).data ==
          std::vector<std::byte>(data.begin() + 4096, data.begin() + 8192));
    CHECK(s.stop() == 0);
}

TEST_CASE("file store: a failing backing file answers ERROR, the server keeps going") {
    fake_kernel k;
    auto store = test::make_file_store(k.options().device_bytes);
    int saved = store.fd.release();
    store.fd.reset(::open("/dev/null", O_RDONLY)); // writes fail with EBADF
    test::running_server s(store, k);
    CHECK(k.write(0, test::pattern(4096, 1)).result == DM_USER_RESP_ERROR);
    CHECK(k.read(0, 4096).result == DM_USER_RESP_SUCCESS); // /dev/null reads as zeros
    CHECK(s.stop() == 0);
    ::close(saved);
    CHECK(s.srv.stats().ops[1].errors == 1);
}

namespace {
// Records whether every span it was handed starts on a page.
struct alignment_store : test::mem_store {
    using mem_store::mem_store;
    std::atomic<int> unaligned{0};
    static bool on_page(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 4096 == 0; }
    void read(std::uint64_t off, std::span<std::byte> out) {
        unaligned += !on_page(out.data());
        mem_store::read(off, out);
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        unaligned += !on_page(in.data());
        mem_store::write(off, in);
    }
};
} // namespace

TEST_CASE("server: every payload a store sees starts on a page, Part 1 and Part 2") {
    for (bool p2 : {true, false}) {
        dmuser::testing::fake_options o;
        o.part2 = p2;
        fake_kernel k(o);
        alignment_store store(k.options().device_bytes);
        test::running_server s(store, k, {.depth = 4});
        INFO("part2 " << p2);
        for (std::size_t len : {512u, 4096u, 65536u}) {
            auto data = test::pattern(len, static_cast<unsigned>(len));
            CHECK(k.write(len * 4, data).result == DM_USER_RESP_SUCCESS);
            CHECK(k.read(len * 4, len).data == data);
        }
        CHECK(store.unaligned == 0);
        CHECK(s.stop() == 0);
        CHECK(k.violations().empty());
    }
}

TEST_CASE("file store: the README's store works with the file opened O_DIRECT") {
    char tmpl[] = "/var/tmp/dmuser-direct-XXXXXX";
    int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, 8 << 20) == 0);
    int direct = ::open(tmpl, O_RDWR | O_DIRECT | O_CLOEXEC);
    ::close(fd);
    ::unlink(tmpl);
    if (direct < 0) {
        WARN("/var/tmp does not support O_DIRECT: " << std::strerror(errno));
        return;
    }
    dmuser::testing::fake_options o;
    o.device_bytes = 8 << 20;
    fake_kernel k(o);
    test::file_store store{dmuser::unique_fd(direct), o.device_bytes};
    test::running_server s(store, k);
    for (std::size_t len : {4096u, 65536u, 131072u}) {
        auto data = test::pattern(len, static_cast<unsigned>(len) + 1);
        CHECK(k.write(len * 8, data).result == DM_USER_RESP_SUCCESS);
        CHECK(k.read(len * 8, len).data == data);
    }
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
    CHECK(s.stop() == 0);
}
