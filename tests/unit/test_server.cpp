// The server against the fake kernel: both module behaviours, concurrency, shutdown,
// malformed input, stats.
#include "alloc_counter.hpp"
#include "server_fixture.hpp"

#include <dmuser/dispatch.hpp>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <future>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

using dmuser::testing::fake_kernel;
using dmuser::testing::fake_options;
using dmuser::testing::fake_request;
using dmuser::testing::fake_response;
using test::mem_store;
using test::pattern;
using test::running_server;
using namespace std::chrono_literals;

namespace {

fake_options part1() {
    fake_options o;
    o.part2 = false;
    return o;
}

void check_round_trip(fake_kernel& k, std::uint64_t offset, std::size_t len, unsigned seed) {
    auto data = pattern(len, seed);
    REQUIRE(k.write(offset, data).result == DM_USER_RESP_SUCCESS);
    fake_response rd = k.read(offset, len);
    REQUIRE(rd.result == DM_USER_RESP_SUCCESS);
    CHECK(rd.data == data);
}

std::vector<std::string> logged;
std::mutex log_mutex;
void capture(dmuser::log::level, std::string_view line) {
    std::lock_guard lock(log_mutex);
    logged.emplace_back(line);
}
bool logged_has(std::string_view s) {
    std::lock_guard lock(log_mutex);
    for (auto& l : logged)
        if (l.find(s) != std::string::npos)
            return true;
    return false;
}
struct log_capture {
    dmuser::log::sink_fn old;
    log_capture() {
        std::lock_guard lock(log_mutex);
        logged.clear();
        old = dmuser::log::set_sink(&capture);
    }
    ~log_capture() { dmuser::log::set_sink(old); }
};

} // namespace

TEST_CASE("server, Part 2: reads and writes round-trip, stats count them") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    running_server s(store, k, {.depth = 4});
    CHECK(s.srv.module().extensions);
    CHECK(s.srv.max_payload() == k.options().max_payload);
    check_round_trip(k, 0, 4096, 1);
    check_round_trip(k, 1 << 20, 128 << 10, 2); // exactly max_payload
    check_round_trip(k, 512, 512, 3);
    CHECK(s.stop() == 0);
    auto st = s.srv.stats();
    CHECK(st.ops[0].requests == 3);
    CHECK(st.ops[1].requests == 3);
    CHECK(st.ops[1].bytes == 4096 + (128 << 10) + 512);
    CHECK(st.total_errors() == 0);
    CHECK(st.in_flight == 0);
    CHECK(k.violations().empty());
    CHECK(k.channel_flags() == DM_USER_CHANNEL_REQUEUE_ON_CLOSE);
}

TEST_CASE("server, Part 1: header then payload, one request at a time per channel") {
    fake_kernel k(part1());
    mem_store store(k.options().device_bytes);
    running_server s(store, k, {.channels = 2});
    CHECK_FALSE(s.srv.module().extensions);
    check_round_trip(k, 0, 4096, 4);
    check_round_trip(k, 8192, 1 << 20, 5); // bigger than the first buffer: it grows
    CHECK(s.stop() == 0);
    CHECK(s.srv.stats().in_flight_high_water == 1);
    CHECK(k.violations().empty());
}

TEST_CASE("server, Part 1: requests arriving in small pieces (short reads)") {
    fake_options o = part1();
    o.piece = 7;
    fake_kernel k(o);
    mem_store store(k.options().device_bytes);
    running_server s(store, k);
    check_round_trip(k, 4096, 3000, 6);
    check_round_trip(k, 0, 65536, 7);
    CHECK(s.stop() == 0);
    CHECK(k.violations().empty());
}

TEST_CASE("server: flush, discard, write_zeroes, FUA and unsupported ops over the wire") {
    for (bool p2 : {true, false}) {
        fake_options o;
        o.part2 = p2;
        fake_kernel k(o);
        mem_store store(k.options().device_bytes);
        running_server s(store, k);
        CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
        CHECK(store.flushes == 1);
        auto data = pattern(8192, 8);
        CHECK(k.write(0, data, DM_USER_REQ_MAP_FLAG_FUA).result == DM_USER_RESP_SUCCESS);
        CHECK(store.flushes == 2);
        CHECK(k.op(DM_USER_REQ_MAP_DISCARD, 0, 4096).result == DM_USER_RESP_SUCCESS);
        CHECK(k.op(DM_USER_REQ_MAP_WRITE_ZEROES, 4096, 4096).result == DM_USER_RESP_SUCCESS);
        CHECK(k.read(0, 8192).data == std::vector<std::byte>(8192));
        CHECK(k.op(DM_USER_REQ_MAP_SECURE_ERASE, 0, 4096).result == DM_USER_RESP_UNSUPPORTED);
        CHECK(k.op(DM_USER_REQ_MAP_WRITE_SAME, 0, 4096).result == DM_USER_RESP_UNSUPPORTED);
        CHECK(s.stop() == 0);
        CHECK(k.violations().empty());
    }
}

TEST_CASE("server: READ answered from the store's own pages (read_view)") {
    fake_kernel k;
    test::lending_store store(k.options().device_bytes);
    running_server s(store, k);
    check_round_trip(k, 65536, 32768, 9);
    CHECK(s.stop() == 0);
}

TEST_CASE("server: large WRITEs land in the store's own pages (write_view)") {
    for (bool p2 : {true, false}) {
        fake_options o;
        o.part2 = p2;
        // What the module does for a read of header + 4 KiB: the rest comes with the next.
        o.split = dmuser::header_size + 4096;
        fake_kernel k(o);
        test::landing_store store(k.options().device_bytes);
        running_server s(store, k, {.depth = 4, .write_view_above = 4096});
        INFO("part2 " << p2);
        auto big = pattern(65536, 21);
        CHECK(k.write(8192, big).result == DM_USER_RESP_SUCCESS);
        CHECK(store.landed_writes == 1);
        CHECK(store.copied_writes == 0);
        CHECK(k.read(8192, 65536).data == big);
        // Small on Part 2: it came whole, so it is copied from the read buffer.
        auto small = pattern(2048, 22);
        CHECK(k.write(0, small).result == DM_USER_RESP_SUCCESS);
        CHECK(store.copied_writes == (p2 ? 1 : 0));
        // The store has flush(): FUA goes through write() and then the flush.
        CHECK(k.write(131072, big, DM_USER_REQ_MAP_FLAG_FUA).result == DM_USER_RESP_SUCCESS);
        CHECK(store.flushes == 1);
        CHECK(k.read(131072, 65536).data == big);
        CHECK(k.read(0, 2048).data == small);
        // Past the end: rejected before any memory is lent, and the stream stays in step.
        CHECK(k.write(k.options().device_bytes - 4096, big).result == DM_USER_RESP_ERROR);
        CHECK(k.write(65536 * 4, big).result == DM_USER_RESP_SUCCESS);
        CHECK(k.read(65536 * 4, 65536).data == big);
        CHECK(s.stop() == 0);
        CHECK(k.violations().empty());
    }
}

// Issue 10, finding 6: with every option at its default, a write_view store reads a WRITE
// above write_view_above (32 KiB) in two, and the fake used to send it as one datagram,
// whose excess the first read dropped; the next request's bytes then landed in the store
// as the rest. The fake now cuts the message where the module ends that first read.
TEST_CASE("server: write_view under default options, large WRITEs arrive intact (finding 6)") {
    fake_kernel k;
    test::landing_store store(k.options().device_bytes);
    running_server s(store, k);
    const std::size_t big = k.options().max_payload; // 128 KiB, 4 x write_view_above
    std::vector<std::future<dmuser::testing::fake_response>> writes;
    for (unsigned i = 0; i < 8; ++i)
        writes.push_back(
            k.submit({DM_USER_REQ_MAP_WRITE, 0, i * big / 512, big, test::pattern(big, 40 + i)}));
    for (auto& w : writes)
        CHECK(w.get().result == DM_USER_RESP_SUCCESS);
    CHECK(store.landed_writes == 8);
    for (unsigned i = 0; i < 8; ++i)
        CHECK(k.read(i * big, big).data == test::pattern(big, 40 + i));
    CHECK(s.stop() == 0);
    CHECK(k.violations().empty());
}

namespace {
// Each request sleeps for the time its first byte says, so answers come out of order.
struct delaying_store {
    std::vector<std::byte> mem = std::vector<std::byte>(1 << 20);
    std::atomic<int> started{0};
    std::uint64_t size() const { return mem.size(); }
    dmuser::task<std::error_code> read(std::uint64_t off, std::span<std::byte> out) {
        ++started;
        co_await dmuser::this_ring().timeout(
            std::chrono::milliseconds(std::to_integer<int>(mem[off])));
        std::memcpy(out.data(), mem.data() + off, out.size());
        co_return std::error_code{};
    }
    dmuser::task<std::error_code> write(std::uint64_t off, std::span<const std::byte> in) {
        ++started;
        co_await dmuser::this_ring().timeout(
            std::chrono::milliseconds(std::to_integer<int>(in[0])));
        std::memcpy(mem.data() + off, in.data(), in.size());
        co_return std::error_code{};
    }
};
} // namespace

TEST_CASE("server, Part 2: requests complete out of order on one channel") {
    fake_kernel k;
    delaying_store store;
    for (int i = 0; i < 8; ++i)
        store.mem[i * 4096] = static_cast<std::byte>(5 + (8 - i) * 8); // first sent, last done
    running_server s(store, k, {.depth = 8});
    std::mutex m;
    std::vector<int> order;
    std::vector<std::future<fake_response>> answers;
    std::atomic<int> done{0};
    for (int i = 0; i < 8; ++i)
        k.submit(fake_request{DM_USER_REQ_MAP_READ, 0, static_cast<std::uint64_t>(i * 8), 4096, {}},
                 [&, i](fake_response r) {
                     CHECK(r.result == DM_USER_RESP_SUCCESS);
                     std::lock_guard lock(m);
                     order.push_back(i);
                     ++done;
                 });
    while (done < 8)
        std::this_thread::sleep_for(1ms);
    CHECK(order.front() == 7);
    CHECK(order.back() == 0);
    CHECK(s.srv.stats().in_flight_high_water == 8);
    CHECK(s.stop() == 0);
    CHECK(k.violations().empty());
}

TEST_CASE("server: many channels on many threads") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    running_server s(store, k, {.threads = 3, .channels = 6, .depth = 4});
    CHECK(k.channels_opened() == 6);
    std::vector<std::thread> clients;
    std::atomic<int> bad{0};
    for (int c = 0; c < 6; ++c)
        clients.emplace_back([&, c] {
            for (int i = 0; i < 50; ++i) {
                std::uint64_t off = (static_cast<std::uint64_t>(c) << 20) + i * 8192;
                auto data = pattern(8192, c * 100 + i);
                if (k.write(off, data).result != DM_USER_RESP_SUCCESS ||
                    k.read(off, 8192).data != data)
                    ++bad;
            }
        });
    for (auto& t : clients)
        t.join();
    CHECK(bad == 0);
    CHECK(s.stop() == 0);
    CHECK(s.srv.stats().total_requests() == 600);
    CHECK(k.violations().empty());
}

TEST_CASE("server: stop answers every request in flight first") {
    for (bool p2 : {true, false}) {
        fake_options o;
        o.part2 = p2;
        fake_kernel k(o);
        delaying_store store;
        std::memset(store.mem.data(), 30, store.mem.size()); // each READ takes 30 ms
        running_server s(store, k, {.channels = p2 ? 1u : 10u, .depth = 16});
        std::vector<std::future<fake_response>> answers;
        for (int i = 0; i < 10; ++i)
            answers.push_back(k.submit(fake_request{DM_USER_REQ_MAP_READ, 0, 0, 512, {}}));
        while (store.started < 10)
            std::this_thread::sleep_for(1ms);
        CHECK(s.stop() == 0);
        for (auto& a : answers)
            CHECK(a.get().result == DM_USER_RESP_SUCCESS);
        CHECK(k.pending_count() == 0);
        CHECK(k.violations().empty());
    }
}

TEST_CASE("server: the target's removal (end of file / ENOTBLK) stops it cleanly") {
    for (bool p2 : {true, false}) {
        fake_options o;
        o.part2 = p2;
        fake_kernel k(o);
        mem_store store(k.options().device_bytes);
        log_capture logs;
        running_server s(store, k, {.threads = 2, .channels = 2});
        check_round_trip(k, 0, 4096, 10);
        k.remove_target();
        CHECK(s.join() == 0);
        CHECK(logged_has("stopping"));
    }
}

TEST_CASE("server, Part 2: malformed messages are rejected, the rest keeps running") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    log_capture logs;
    running_server s(store, k, {.depth = 2});
    std::vector<std::byte> junk(10, std::byte{0x5a});
    k.inject(0, junk); // shorter than a header: nothing to answer
    dmuser::request h;

    h.type = 99; // unknown type
    CHECK(k.inject_request(0, h, {}).get().result == DM_USER_RESP_ERROR);

    h.type = DM_USER_REQ_MAP_WRITE; // payload shorter than len
    h.len = 4096;
    CHECK(k.inject_request(0, h, pattern(100, 1)).get().result == DM_USER_RESP_ERROR);

    h.len = 4096; // payload longer than len
    CHECK(k.inject_request(0, h, pattern(5000, 1)).get().result == DM_USER_RESP_ERROR);

    h.len = k.options().max_payload * 2; // over the maximum
    CHECK(k.inject_request(0, h, pattern(h.len, 1)).get().result == DM_USER_RESP_ERROR);

    h.type = DM_USER_REQ_MAP_READ; // a READ carrying a payload
    h.len = 512;
    CHECK(k.inject_request(0, h, pattern(512, 1)).get().result == DM_USER_RESP_ERROR);

    h.sector = k.options().device_bytes / 512; // past the end
    CHECK(k.inject_request(0, h, {}).get().result == DM_USER_RESP_ERROR);

    check_round_trip(k, 0, 4096, 11); // still serving
    CHECK(s.stop() == 0);
    CHECK(s.srv.stats().malformed == 7);
    CHECK(logged_has("short message of 10 bytes"));
    CHECK(logged_has("unknown request type"));
    CHECK(logged_has("message shorter than its header says"));
    CHECK(logged_has("message longer than its header says"));
    CHECK(logged_has("length over the maximum payload"));
    CHECK(logged_has("range beyond the end of the store"));
    CHECK(k.violations().empty());
}

TEST_CASE("server, Part 1: malformed requests are rejected and the stream stays in step") {
    fake_kernel k(part1());
    mem_store store(k.options().device_bytes);
    log_capture logs;
    running_server s(store, k, {.part1_max_payload = 64 << 10});
    dmuser::request h;
    h.type = 42;
    CHECK(k.inject_request(0, h, {}).get().result == DM_USER_RESP_ERROR);
    h.type = DM_USER_REQ_MAP_WRITE; // over the maximum, payload skipped
    h.len = 256 << 10;
    CHECK(k.inject_request(0, h, pattern(h.len, 2)).get().result == DM_USER_RESP_ERROR);
    check_round_trip(k, 0, 65536, 12);
    CHECK(s.stop() == 0);
    CHECK(s.srv.stats().malformed == 2);
    CHECK(k.violations().empty());
}

TEST_CASE("server: a store's exception answers ERROR and the server goes on") {
    struct flaky : mem_store {
        using mem_store::mem_store;
        void write(std::uint64_t off, std::span<const std::byte> in) {
            if (off == 0)
                throw std::runtime_error("sector 0 is cursed");
            mem_store::write(off, in);
        }
    };
    fake_kernel k;
    flaky store(k.options().device_bytes);
    log_capture logs;
    running_server s(store, k);
    CHECK(k.write(0, pattern(512, 1)).result == DM_USER_RESP_ERROR);
    check_round_trip(k, 4096, 512, 13);
    CHECK(s.stop() == 0);
    CHECK(logged_has("sector 0 is cursed"));
    CHECK(s.srv.stats().ops[1].errors == 1);
}

TEST_CASE("server: requests queued before the daemon starts are served") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    auto early = k.submit(fake_request{DM_USER_REQ_MAP_WRITE, 0, 0, 512, pattern(512, 14)});
    running_server s(store, k);
    CHECK(early.get().result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(0, 512).data == pattern(512, 14));
    CHECK(s.stop() == 0);
}

TEST_CASE("server: with REQUEUE_ON_CLOSE a new daemon takes over unanswered requests") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    // A daemon that reads a request, then dies without answering.
    dmuser::unique_fd dying = k.open_channel();
    REQUIRE_FALSE(k.set_channel_flags(dying.get(), DM_USER_CHANNEL_REQUEUE_ON_CLOSE));
    auto answer = k.submit(fake_request{DM_USER_REQ_MAP_WRITE, 0, 8, 512, pattern(512, 15)});
    std::vector<std::byte> buf(65536);
    REQUIRE(::read(dying.get(), buf.data(), buf.size()) == 40 + 512);
    dying.reset();
    while (k.requeued() < 1)
        std::this_thread::sleep_for(1ms);
    running_server s(store, k);
    CHECK(answer.get().result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(4096, 512).data == pattern(512, 15));
    CHECK(s.stop() == 0);
}

TEST_CASE("server: stats are printed periodically when asked") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    log_capture logs;
    running_server s(store, k, {.stats_interval = std::chrono::milliseconds(10)});
    check_round_trip(k, 0, 4096, 16);
    std::this_thread::sleep_for(50ms);
    CHECK(s.stop() == 0);
    CHECK(logged_has("read 1 req 4096 B 0 err"));
}

TEST_CASE("server: SIGTERM answers the requests in flight, then stops") {
    fake_kernel k;
    delaying_store store;
    std::memset(store.mem.data(), 20, store.mem.size());
    dmuser::server srv(store, k, {.depth = 8, .io_flusher = false, .handle_signals = true});
    std::atomic<int> rc{-1};
    // Sent to run()'s thread: its handler relays it to the server's loop.
    std::thread t([&] { rc = srv.run(); });
    while (!srv.ready())
        std::this_thread::sleep_for(1ms);
    std::vector<std::future<fake_response>> answers;
    for (int i = 0; i < 4; ++i)
        answers.push_back(k.submit(fake_request{DM_USER_REQ_MAP_READ, 0, 0, 512, {}}));
    while (store.started < 4)
        std::this_thread::sleep_for(1ms);
    REQUIRE(pthread_kill(t.native_handle(), SIGTERM) == 0);
    t.join();
    CHECK(rc == 0);
    for (auto& a : answers)
        CHECK(a.get().result == DM_USER_RESP_SUCCESS);
}

TEST_CASE("server: a second run() throws logic_error instead of using freed channels") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    running_server s(store, k);
    CHECK(s.stop() == 0);
    CHECK_THROWS_AS(s.srv.run(), std::logic_error);
}

TEST_CASE("server: once run() has returned, ready() is false and no channel is open") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    running_server s(store, k, {.channels = 2});
    CHECK(s.srv.channels_open() == 2);
    CHECK(s.stop() == 0);
    CHECK_FALSE(s.srv.ready());
    CHECK(s.srv.channels_open() == 0);
}

namespace {
// Succeeds without filling its span past the first MiB.
struct lazy_store : mem_store {
    using mem_store::mem_store;
    void read(std::uint64_t off, std::span<std::byte> out) {
        if (off < (1u << 20))
            mem_store::read(off, out);
    }
};
} // namespace

TEST_CASE("server: a READ the store does not fill answers zeros, not an earlier request's bytes") {
    fake_kernel k;
    lazy_store store(k.options().device_bytes);
    // One slot, so both READs use the same buffer.
    running_server s(store, k, {.depth = 1});
    auto secret = pattern(4096, 70);
    REQUIRE(k.write(0, secret).result == DM_USER_RESP_SUCCESS);
    REQUIRE(k.read(0, 4096).data == secret);
    CHECK(k.read(2u << 20, 4096).data == std::vector<std::byte>(4096));
    CHECK(s.stop() == 0);
}

TEST_CASE("server, Part 1: write_view_above = 0 means no WRITE lands in the store's pages") {
    fake_kernel k(part1());
    test::landing_store store(k.options().device_bytes);
    running_server s(store, k, {.write_view_above = 0});
    auto big = pattern(65536, 80);
    CHECK(k.write(0, big).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(0, 65536).data == big);
    CHECK(store.landed_writes == 0);
    CHECK(store.copied_writes == 1);
    CHECK(s.stop() == 0);
}

namespace {
// io-wq worker threads ("iou-wrk-TID") in this process, but the test thread's own: ring
// tests may have left one idle there. Those of threads that have ended are gone (a
// thread's io-wq ends with it).
std::size_t io_workers_of_other_threads() {
    const std::string mine = "iou-wrk-" + std::to_string(::gettid());
    std::size_t n = 0;
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
        std::ifstream comm_file(task.path() / "comm");
        std::string comm;
        std::getline(comm_file, comm);
        if (comm.starts_with("iou-wrk-") && comm != mine)
            ++n;
    }
    return n;
}
} // namespace

TEST_CASE("server, Part 2: slots waiting on one channel park no io_uring worker thread") {
    // Sixteen reads wait on one channel for requests that come one at a time. Reads that
    // wait in the kernel are each polled by io_uring; a request woke them all, and a read
    // that kept losing was handed to an io-wq thread to block in read() (on 6.1 at its
    // second loss; here after a bounded number of retries). Now each slot waits in an
    // exclusive poll, a request wakes one, and no read ever waits in the kernel.
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    running_server s(store, k, {.depth = 16});
    for (std::uint64_t i = 0; i < 600; ++i)
        REQUIRE(k.read((i % 64) * 4096, 4096).result == DM_USER_RESP_SUCCESS);
    CHECK(io_workers_of_other_threads() == 0);
    CHECK(s.stop() == 0);
    CHECK(s.srv.stats().total_requests() == 600);
    CHECK(k.violations().empty());
}

TEST_CASE("server: a response the module refuses with EBUSY is retried, not dropped") {
    for (bool p2 : {true, false}) {
        INFO("part2 " << p2);
        fake_options o;
        o.part2 = p2;
        o.refuse_responses = 3;
        fake_kernel k(o);
        mem_store store(k.options().device_bytes);
        // No requeue: a request the daemon drops is lost when its channel closes, not
        // handed to a channel that answers it.
        running_server s(store, k, {.requeue_on_close = false});
        auto data = pattern(4096, 90);
        auto answer = k.submit(fake_request{DM_USER_REQ_MAP_WRITE, 0, 16, 4096, data});
        while (k.refused() < 3 && s.srv.stats().total_errors() == 0)
            std::this_thread::sleep_for(1ms);
        CHECK(s.stop() == 0);
        CHECK(answer.get().result == DM_USER_RESP_SUCCESS);
        CHECK(k.refused() == 3);
        CHECK(s.srv.stats().total_errors() == 0);
        CHECK(k.violations().empty());
    }
}

namespace {
// Notes the size of the completion queue of the ring that serves it.
struct cq_probe_store : mem_store {
    using mem_store::mem_store;
    std::atomic<unsigned> cq_entries{0};
    void read(std::uint64_t off, std::span<std::byte> out) {
        cq_entries = dmuser::this_ring().native()->cq.ring_entries;
        mem_store::read(off, out);
    }
};
} // namespace

TEST_CASE("server: each ring's completion queue holds every request its thread can have in "
          "flight") {
    fake_options o;
    o.max_payload = 4096; // 4,096 slots of one page each
    fake_kernel k(o);
    cq_probe_store store(k.options().device_bytes);
    running_server s(store, k, {.threads = 1, .channels = 64, .depth = 64});
    REQUIRE(k.read(0, 4096).result == DM_USER_RESP_SUCCESS);
    CHECK(store.cq_entries >= 64u * 64u);
    CHECK(s.stop() == 0);
}

namespace {
// Notes how many allocations the serving thread had made when each READ came.
struct alloc_probe_store : mem_store {
    using mem_store::mem_store;
    std::atomic<std::size_t> allocations{0};
    void read(std::uint64_t off, std::span<std::byte> out) {
        allocations = test::allocations_on_this_thread();
        mem_store::read(off, out);
    }
};
struct log_level_guard {
    dmuser::log::level old = dmuser::log::get_level();
    ~log_level_guard() { dmuser::log::set_level(old); }
};
} // namespace

// Under ASan every coroutine frame comes from the heap on purpose (frame_allocator.hpp), so a
// request served allocates there and this count has nothing to compare with.
#if !defined(__SANITIZE_ADDRESS__)
TEST_CASE("server: with logging off, a rejected request allocates nothing") {
    fake_kernel k;
    alloc_probe_store store(k.options().device_bytes);
    log_level_guard level;
    dmuser::log::set_level(dmuser::log::level::off);
    running_server s(store, k, {.depth = 1}); // one slot: requests are served in order
    REQUIRE(k.read(0, 4096).result == DM_USER_RESP_SUCCESS); // warms the frame caches
    REQUIRE(k.read(0, 4096).result == DM_USER_RESP_SUCCESS);
    const std::size_t warm = store.allocations;
    REQUIRE(k.read(0, 4096).result == DM_USER_RESP_SUCCESS);
    REQUIRE(store.allocations == warm); // a request served allocates nothing
    dmuser::request h;
    h.type = 99; // unknown
    CHECK(k.inject_request(0, h, {}).get().result == DM_USER_RESP_ERROR);
    std::vector<std::byte> junk(10, std::byte{0x5a}); // shorter than a header
    k.inject(0, junk);
    REQUIRE(k.read(0, 4096).result == DM_USER_RESP_SUCCESS); // comes after the junk
    CHECK(store.allocations - warm == 0);
    CHECK(s.stop() == 0);
    CHECK(s.srv.stats().malformed == 2);
}
#endif

TEST_CASE("server: a thread that cannot start is a system_error; the others stop and are "
          "joined, and the signal mask is restored") {
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    sigset_t before;
    REQUIRE(pthread_sigmask(SIG_SETMASK, nullptr, &before) == 0);
    std::atomic<int> started{0};
    std::atomic<int> ended{0};
    dmuser::server_options o{.threads = 3, .io_flusher = false, .handle_signals = true};
    // The second thread fails as pthread_create does under a pids cgroup's limit.
    o.start_thread = [&](std::function<void()> body) {
        if (started == 1)
            throw std::system_error(EAGAIN, std::generic_category(), "pthread_create");
        ++started;
        return std::thread([&ended, body = std::move(body)] {
            body();
            ++ended;
        });
    };
    dmuser::server srv(store, k, o);
    try {
        srv.run();
        FAIL("run() returned");
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::resource_unavailable_try_again);
    }
    CHECK(started == 1);
    CHECK(ended == 1);
    CHECK_FALSE(srv.ready());
    sigset_t after;
    REQUIRE(pthread_sigmask(SIG_SETMASK, nullptr, &after) == 0);
    CHECK(sigismember(&after, SIGTERM) == sigismember(&before, SIGTERM));
    CHECK(sigismember(&after, SIGINT) == sigismember(&before, SIGINT));
}

TEST_CASE("server, Part 1: channels x depth channels by default, one request in flight each") {
    fake_kernel k(part1());
    mem_store store(k.options().device_bytes);
    running_server s(store, k, {.channels = 2, .depth = 4});
    CHECK(k.channels_opened() == 8);
    CHECK(s.srv.channels_open() == 8);
    check_round_trip(k, 0, 4096, 91);
    CHECK(s.stop() == 0);
    CHECK(k.violations().empty());
}

TEST_CASE("GET_INFO failing with ENOTTY or EOPNOTSUPP means Android's module (Part 1)") {
    CHECK(dmuser::get_info_means_part1(ENOTTY));
    CHECK(dmuser::get_info_means_part1(EOPNOTSUPP)); // the 2020 RFC's variant
    CHECK_FALSE(dmuser::get_info_means_part1(EBADF));
    // /dev/null has no such ioctl (ENOTTY): query() falls back rather than throwing.
    dmuser::device_channels null_device("/dev/null");
    dmuser::unique_fd fd = null_device.open_channel();
    CHECK_FALSE(null_device.query(fd.get()).extensions);
}

namespace {
// Holds every READ until `release` is written (never, if nobody does): a store that does
// not answer. Its wait is an operation on the ring, so a ring that shuts down cancels it.
struct stuck_store {
    std::vector<std::byte> mem = std::vector<std::byte>(1 << 20);
    dmuser::unique_fd release{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
    std::atomic<int> started{0};
    std::uint64_t size() const { return mem.size(); }
    dmuser::task<std::error_code> read(std::uint64_t off, std::span<std::byte> out) {
        ++started;
        dmuser::io_result r = co_await dmuser::this_ring().poll(release.get(), POLLIN);
        if (r.res < 0)
            co_return std::error_code(-r.res, std::system_category());
        std::memcpy(out.data(), mem.data() + off, out.size());
        co_return std::error_code{};
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
    void let_go() {
        std::uint64_t one = 1;
        REQUIRE(::write(release.get(), &one, sizeof one) == sizeof one);
    }
};

// What SIGTERM does when no server handles it (Catch2's handler, or the default), to check
// that run() put it back.
void (*sigterm_handler())(int) {
    struct sigaction now {};
    ::sigaction(SIGTERM, nullptr, &now);
    return now.sa_handler;
}
} // namespace

TEST_CASE("server: a process-directed SIGTERM stops it although other threads do not block it") {
    // Neither this thread nor the fake kernel's blocks SIGTERM: the kernel may hand the
    // signal to any of them.
    fake_kernel k;
    mem_store store(k.options().device_bytes);
    const auto before = sigterm_handler();
    dmuser::server srv(store, k, {.io_flusher = false, .handle_signals = true});
    std::atomic<int> rc{-1};
    std::thread t([&] { rc = srv.run(); });
    while (!srv.ready())
        std::this_thread::sleep_for(1ms);
    check_round_trip(k, 0, 4096, 92);
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    t.join();
    CHECK(rc == 0);
    CHECK(sigterm_handler() == before);
}

TEST_CASE("server: a second SIGTERM closes the channels; the next daemon gets their requests") {
    fake_kernel k;
    stuck_store store;
    log_capture logs;
    const auto before = sigterm_handler();
    dmuser::server srv(store, k,
                       {.depth = 1,
                        .io_flusher = false,
                        .handle_signals = true,
                        .stop_deadline = std::chrono::hours(1)});
    std::atomic<int> rc{-1};
    std::thread t([&] { rc = srv.run(); });
    while (!srv.ready())
        std::this_thread::sleep_for(1ms);
    auto answer = k.submit(fake_request{DM_USER_REQ_MAP_READ, 0, 0, 512, {}});
    while (store.started < 1)
        std::this_thread::sleep_for(1ms);
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    while (!logged_has("then stopping")) // the first was taken, so the next is a new one
        std::this_thread::sleep_for(1ms);
    REQUIRE(::kill(::getpid(), SIGTERM) == 0);
    while (k.requeued() < 1) // its channel closed with REQUEUE_ON_CLOSE
        std::this_thread::sleep_for(1ms);
    {
        mem_store next_store(store.size());
        running_server next(next_store, k);
        CHECK(answer.get().result == DM_USER_RESP_SUCCESS);
        CHECK(next.stop() == 0);
    }
    store.let_go(); // the first daemon's store answers at last, into the closed channel
    t.join();
    CHECK(rc == 0);
    CHECK(logged_has("closing the channels"));
    CHECK(sigterm_handler() == before);
}

TEST_CASE("server: the stop deadline gives up on a store that never answers") {
    fake_kernel k;
    stuck_store store; // never let go
    running_server s(store, k, {.requeue_on_close = false, .stop_deadline = 1ms});
    auto answer = k.submit(fake_request{DM_USER_REQ_MAP_READ, 0, 0, 512, {}});
    while (store.started < 1)
        std::this_thread::sleep_for(1ms);
    CHECK(s.stop() == 1); // not a clean stop
    CHECK(answer.get().result == fake_response::lost);
    CHECK(k.violations().empty());
}
