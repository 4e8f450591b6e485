// Regression tests for what the libFuzzer targets of tests/fuzz/ found in the SDK. Each
// case names the finding; its crashing input stays in tests/fuzz/corpus/.
#include "server_fixture.hpp"

#include <future>
#include <sys/socket.h>

using test::mem_store;
using test::running_server;
using namespace std::chrono_literals;

namespace {

// Part 1 channels over stream socketpairs whose kernel ends the test holds, so it can end
// one channel and leave the others open (the fake kernel ends all of them at once).
class socket_channels final : public dmuser::channel_source {
public:
    dmuser::unique_fd open_channel() override {
        // Called on the server's thread, where Catch2's REQUIRE may not be used.
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            throw std::system_error(errno, std::system_category(), "socketpair");
        kernel_ends.emplace_back(sv[0]);
        return dmuser::unique_fd(sv[1]);
    }
    dmuser::module_info query(int) override { return {}; } // ENOTTY: Android's module
    std::error_code set_channel_flags(int, std::uint64_t) override {
        return std::make_error_code(std::errc::inappropriate_io_control_operation);
    }
    std::string describe() const override { return "socket channels"; }

    std::vector<dmuser::unique_fd> kernel_ends;
};

// Waits for run() to end; the bound only turns a hang into a failure (it then unblocks
// the server by ending every channel, so the test process can go on).
bool ends(running_server<mem_store>& s, socket_channels& src) {
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!s.finished() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(1ms);
    bool ended = s.finished();
    if (!ended)
        for (auto& fd : src.kernel_ends)
            ::shutdown(fd.get(), SHUT_RDWR);
    s.join();
    return ended;
}

struct quiet_log {
    dmuser::log::level before = dmuser::log::get_level();
    quiet_log() { dmuser::log::set_level(dmuser::log::level::off); }
    ~quiet_log() { dmuser::log::set_level(before); }
};

} // namespace

TEST_CASE("fuzz finding: end of file on one channel cancels the reads of the worker's other "
          "channels, so run() ends") {
    // One worker, two channels. The first read to meet EOF marked the worker stopping
    // before it asked the server to stop, and stop_worker then skipped the cancelling it
    // does only once: the other channel's read waited for ever, and so did run().
    quiet_log quiet;
    socket_channels src;
    mem_store store(1 << 20);
    // The source speaks Part 1, where the server opens channels x depth channels.
    running_server s(store, src, {.threads = 1, .channels = 2, .depth = 1});
    REQUIRE(src.kernel_ends.size() == 2);
    ::shutdown(src.kernel_ends[0].get(), SHUT_WR); // channel 0 reads end of file
    CHECK(ends(s, src));
}

TEST_CASE("fuzz finding: stop() after a read met end of file still ends run()") {
    quiet_log quiet;
    socket_channels src;
    mem_store store(1 << 20);
    running_server s(store, src, {.threads = 1, .channels = 3, .depth = 1});
    REQUIRE(src.kernel_ends.size() == 3);
    ::shutdown(src.kernel_ends[1].get(), SHUT_WR);
    s.srv.stop();
    CHECK(ends(s, src));
}

TEST_CASE("fuzz finding: a WRITE shorter than its header says, on a write_view server, is "
          "answered ERROR, not taken for a split one (stop() hung)") {
    // A store with write_view makes whole-message reads stop after write_view_above bytes;
    // the rest of a larger WRITE comes with the next read. A read that came back short of
    // its header's len was taken for such a split even when it had not filled the buffer,
    // so the server waited, uncancellably, for payload that never comes (fuzz_server input
    // tests/fuzz/corpus/fuzz_server/crash-short-write-taken-as-split). The module splits a
    // message only when it fills the read's buffer.
    quiet_log quiet;
    dmuser::testing::fake_options o;
    o.split = dmuser::header_size + 8192; // as the module answers a read of header + 8 KiB
    dmuser::testing::fake_kernel k(o);
    test::landing_store store(k.options().device_bytes);
    running_server s(store, k, {.depth = 2, .write_view_above = 8192});
    dmuser::request h;
    h.type = DM_USER_REQ_MAP_WRITE;
    h.len = 4096;
    auto answer = k.inject_request(0, h, test::pattern(100, 1));
    bool answered = answer.wait_for(60s) == std::future_status::ready;
    if (!answered)
        k.remove_target(); // unblocks the server so the test can end
    REQUIRE(answered);
    CHECK(answer.get().result == DM_USER_RESP_ERROR);
    // And the server still serves the module's real split WRITEs.
    auto data = test::pattern(3 * 8192, 2);
    CHECK(k.write(0, data).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(0, data.size()).data == data);
    CHECK(s.stop() == 0);
}
