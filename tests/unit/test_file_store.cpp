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
