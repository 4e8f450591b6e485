// Randomized model test: thousands of mixed ops through the fake kernel and the server,
// each lane of the device checked byte for byte against a reference.
#include "server_fixture.hpp"
#include "stores.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>

using dmuser::testing::fake_kernel;
using dmuser::testing::fake_options;

namespace {

struct model_result {
    int mismatches = 0;
    int failures = 0;
    int ops = 0;
};

// One lane owns [base, base + span) and issues ops one after another; lanes run at once.
void run_lane(fake_kernel& k, std::uint64_t base, std::uint64_t span, unsigned seed, int ops,
              std::uint64_t max_len, model_result& out) {
    std::mt19937_64 rng(seed);
    std::vector<std::byte> ref(span);
    auto pick = [&](std::uint64_t& off, std::uint64_t& len) {
        std::uint64_t sectors = span / 512;
        off = (rng() % sectors) * 512;
        std::uint64_t most = std::min(max_len, span - off) / 512;
        len = (1 + rng() % most) * 512;
    };
    for (int i = 0; i < ops; ++i) {
        std::uint64_t off, len;
        pick(off, len);
        int kind = static_cast<int>(rng() % 100);
        dmuser::testing::fake_response r;
        if (kind < 40) {
            r = k.read(base + off, len);
            if (r.result == DM_USER_RESP_SUCCESS &&
                std::memcmp(r.data.data(), ref.data() + off, len) != 0)
                ++out.mismatches;
        } else if (kind < 80) {
            auto data = test::pattern(len, static_cast<unsigned>(rng()));
            static constexpr std::uint64_t flag_choices[] = {
                0, DM_USER_REQ_MAP_FLAG_FUA, DM_USER_REQ_MAP_FLAG_PREFLUSH,
                DM_USER_REQ_MAP_FLAG_FUA | DM_USER_REQ_MAP_FLAG_PREFLUSH,
                DM_USER_REQ_MAP_FLAG_SYNC};
            r = k.write(base + off, data, flag_choices[rng() % 5]);
            if (r.result == DM_USER_RESP_SUCCESS)
                std::memcpy(ref.data() + off, data.data(), len);
        } else if (kind < 86) {
            r = k.flush();
        } else if (kind < 93) {
            r = k.op(DM_USER_REQ_MAP_DISCARD, base + off, len);
            if (r.result == DM_USER_RESP_SUCCESS)
                std::memset(ref.data() + off, 0, len);
        } else {
            r = k.op(DM_USER_REQ_MAP_WRITE_ZEROES, base + off, len);
            if (r.result == DM_USER_RESP_SUCCESS)
                std::memset(ref.data() + off, 0, len);
        }
        if (r.result != DM_USER_RESP_SUCCESS)
            ++out.failures;
        ++out.ops;
    }
    for (std::uint64_t off = 0; off < span; off += max_len) {
        std::uint64_t len = std::min(max_len, span - off);
        auto r = k.read(base + off, len);
        if (r.result != DM_USER_RESP_SUCCESS || std::memcmp(r.data.data(), ref.data() + off, len))
            ++out.mismatches;
    }
}

template <typename Store>
void run_model(Store& store, fake_options fo, dmuser::server_options so, int ops_per_lane,
               unsigned seed) {
    fake_kernel k(fo);
    test::running_server s(store, k, so);
    constexpr int lanes = 8;
    std::uint64_t span = fo.device_bytes / lanes;
    std::vector<model_result> results(lanes);
    std::vector<std::thread> threads;
    std::atomic<int> lanes_done{0};
    for (int l = 0; l < lanes; ++l)
        threads.emplace_back([&, l] {
            run_lane(k, l * span, span, seed * 31 + l, ops_per_lane, fo.max_payload, results[l]);
            ++lanes_done;
        });
    // A lane stuck on a request that never comes back: say where the fake stands, then end
    // the pending requests so the test ends (a bound on a hang, not a wait for time).
    for (int tick = 0; lanes_done < lanes && tick < 3000; ++tick)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (lanes_done < lanes) {
        FAIL_CHECK("lanes stuck after 300 s: " << k.describe_state());
        k.remove_target();
    }
    for (auto& t : threads)
        t.join();
    CHECK(s.stop() == 0);
    int mismatches = 0, failures = 0, ops = 0;
    for (auto& r : results) {
        mismatches += r.mismatches;
        failures += r.failures;
        ops += r.ops;
    }
    INFO("part2 " << fo.part2 << ", " << ops << " ops");
    CHECK(ops == lanes * ops_per_lane);
    CHECK(mismatches == 0);
    CHECK(failures == 0);
    CHECK(k.violations().empty());
    CHECK(k.pending_count() == 0);
    auto st = s.srv.stats();
    CHECK(st.total_errors() == 0);
    CHECK(st.malformed == 0);
}

} // namespace

TEST_CASE("model: random ops on a memory store, Part 2, 2 threads x 4 channels") {
    fake_options fo;
    fo.device_bytes = 8 << 20;
    fo.max_payload = 64 << 10;
    test::mem_store store(fo.device_bytes);
    run_model(store, fo, {.threads = 2, .channels = 4, .depth = 8}, 500, 1);
}

// Once hung, rarely (under ASan, about 1 run in 6), with a request the server had read and not
// answered: a read that ended a request begun by an earlier read ran on into the next one,
// sent while it copied (fake_kernel.hpp: wait_for_read_in_progress).
TEST_CASE("model: Part 2 over the fake's stream channels, which read as the module does",
          "[stream]") {
    fake_options fo;
    fo.stream = true;
    fo.device_bytes = 8 << 20;
    fo.max_payload = 32 << 10; // a request then fits one socket buffer, so it shows whole
    test::mem_store store(fo.device_bytes);
    run_model(store, fo, {.threads = 2, .channels = 4, .depth = 8}, 500, 11);
    // write_view: a WRITE over 8 KiB is read in two, its rest with the channel's next read.
    test::landing_store lander(fo.device_bytes);
    run_model(lander, fo, {.threads = 2, .channels = 2, .depth = 4, .write_view_above = 8192}, 400,
              12);
    CHECK(lander.landed_writes > 0);
}

// The race behind that hang, driven head-on: a daemon reads each request in two, a little of
// it and then the rest with a large buffer, while the next request waits to be sent the moment
// the last byte is taken. The second read must end where the request does, as the module's.
TEST_CASE("fake stream channel: a read that ends a request begun by an earlier read stops "
          "there, though the next request is sent at once",
          "[stream]") {
    fake_options fo;
    fo.stream = true;
    fo.device_bytes = 8 << 20;
    fake_kernel k(fo);
    auto channel = k.open_channel();
    REQUIRE(channel);
    // The old fake ran two requests into one read about once in 300,000 (measured on 2 cores).
    constexpr int requests = 30000;
    constexpr std::size_t len = 8192, first = dmuser::header_size + 100;
    auto submit = [&] {
        k.submit({DM_USER_REQ_MAP_WRITE, 0, 0, len, std::vector<std::byte>(len)},
                 [](dmuser::testing::fake_response) {});
    };
    for (int i = 0; i < 4; ++i)
        submit(); // a few queued behind the one being read, so the next is always there
    std::vector<std::byte> buf(256 << 10);
    int overruns = 0;
    for (int i = 0; i < requests; ++i) {
        ssize_t a = ::read(channel.get(), buf.data(), first);
        REQUIRE(a == static_cast<ssize_t>(first));
        auto req = dmuser::decode_header(
            std::span<const std::byte, dmuser::header_size>(buf.data(), dmuser::header_size));
        ssize_t b = ::read(channel.get(), buf.data(), buf.size());
        REQUIRE(b > 0);
        overruns += b != static_cast<ssize_t>(dmuser::header_size + len - first);
        std::array<std::byte, dmuser::header_size> resp;
        dmuser::encode_response(resp, req, dmuser::result::success);
        REQUIRE(::write(channel.get(), resp.data(), resp.size()) ==
                static_cast<ssize_t>(resp.size()));
        if (overruns)
            break; // the stream is out of step with the requests now
        if (i + 4 < requests)
            submit();
    }
    CHECK(overruns == 0);
    CHECK(k.violations().empty());
    channel.reset();
}

TEST_CASE("model: random ops on a memory store, Part 1, 4 channels") {
    fake_options fo;
    fo.part2 = false;
    fo.device_bytes = 8 << 20;
    fo.max_payload = 64 << 10;
    test::mem_store store(fo.device_bytes);
    run_model(store, fo, {.threads = 2, .channels = 4}, 500, 2);
}

TEST_CASE("model: random ops on an async store that completes out of order") {
    for (bool p2 : {true, false}) {
        fake_options fo;
        fo.part2 = p2;
        fo.device_bytes = 4 << 20;
        fo.max_payload = 32 << 10;
        test::jittery_store store(fo.device_bytes);
        run_model(store, fo, {.threads = 2, .channels = 2, .depth = 16}, 300, 3 + p2);
    }
}

TEST_CASE("model: random ops on a file-backed store (backing I/O on the same ring)") {
    fake_options fo;
    fo.device_bytes = 8 << 20;
    fo.max_payload = 128 << 10;
    auto store = test::make_file_store(fo.device_bytes);
    run_model(store, fo, {.threads = 2, .channels = 2, .depth = 8}, 300, 5);
}

TEST_CASE("model: random ops on a store lending its pages for READs and WRITEs") {
    for (bool p2 : {true, false}) {
        fake_options fo;
        fo.part2 = p2;
        fo.device_bytes = 8 << 20;
        fo.max_payload = 64 << 10;
        fo.split = dmuser::header_size + 8192;
        test::landing_store store(fo.device_bytes);
        run_model(store, fo, {.threads = 2, .channels = 2, .depth = 4, .write_view_above = 8192},
                  400, 7 + p2);
        CHECK(store.landed_writes > 0);
    }
}
