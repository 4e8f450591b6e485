// The reactor: every awaitable, batching, a full SQ, cancellation, cross-thread post.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <dmuser/file_io.hpp>
#include <dmuser/ring.hpp>
#include <dmuser/spawn.hpp>
#include <fcntl.h>
#include <optional>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <thread>
#include <unistd.h>
#include <vector>

using dmuser::io_result;
using dmuser::ring;
using dmuser::task;
using namespace std::chrono_literals;

namespace {

struct temp_file {
    dmuser::unique_fd fd;
    std::string path;
    temp_file() {
        char tmpl[] = "/tmp/dmuser-test-XXXXXX";
        fd.reset(::mkstemp(tmpl));
        REQUIRE(fd);
        path = tmpl;
        ::unlink(tmpl);
    }
};

std::vector<std::byte> bytes_of(std::string_view s) {
    std::vector<std::byte> v(s.size());
    std::memcpy(v.data(), s.data(), s.size());
    return v;
}

} // namespace

TEST_CASE("ring: write, read, fsync, fdatasync on a file") {
    ring r;
    temp_file f;
    auto data = bytes_of("hello, ring");
    auto t = [&]() -> task<std::string> {
        io_result w = co_await r.write(f.fd.get(), data, 100);
        REQUIRE(w.res == static_cast<int>(data.size()));
        REQUIRE((co_await r.fsync(f.fd.get())).ok());
        REQUIRE((co_await r.fdatasync(f.fd.get())).ok());
        std::vector<std::byte> back(data.size());
        io_result rd = co_await r.read(f.fd.get(), back, 100);
        REQUIRE(rd.res == static_cast<int>(back.size()));
        co_return std::string(reinterpret_cast<const char*>(back.data()), back.size());
    };
    CHECK(r.run(t()) == "hello, ring");
}

TEST_CASE("ring: readv and writev") {
    ring r;
    temp_file f;
    char a[] = "abc", b[] = "defg";
    iovec out[2] = {{a, 3}, {b, 4}};
    char c[4] = {}, d[3] = {};
    iovec in[2] = {{c, 4}, {d, 3}};
    auto t = [&]() -> task<void> {
        CHECK((co_await r.writev(f.fd.get(), out, 0)).res == 7);
        CHECK((co_await r.readv(f.fd.get(), in, 0)).res == 7);
    };
    r.run(t());
    CHECK(std::string(c, 4) == "abcd");
    CHECK(std::string(d, 3) == "efg");
}

TEST_CASE("ring: fallocate punches a hole that reads as zeros") {
    ring r;
    temp_file f;
    std::vector<std::byte> ones(8192, std::byte{1});
    auto t = [&]() -> task<int> {
        REQUIRE((co_await r.write(f.fd.get(), ones, 0)).res == 8192);
        io_result fa =
            co_await r.fallocate(f.fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096);
        if (!fa.ok())
            co_return fa.res; // a filesystem without holes: reported, not hidden
        std::vector<std::byte> back(8192);
        REQUIRE((co_await r.read(f.fd.get(), back, 0)).res == 8192);
        int zeros = 0;
        for (std::size_t i = 0; i < 4096; ++i)
            zeros += back[i] == std::byte{0};
        CHECK(back[4096] == std::byte{1});
        co_return zeros;
    };
    int got = r.run(t());
    if (got == -EOPNOTSUPP)
        WARN("/tmp does not support hole punching");
    else
        CHECK(got == 4096);
}

TEST_CASE("ring: fallocate error comes back as -errno") {
    ring r;
    auto t = [&]() -> task<int> { co_return (co_await r.fallocate(-1, 0, 0, 4096)).res; };
    CHECK(r.run(t()) == -EBADF);
}

TEST_CASE("ring: poll waits for a pipe to become readable") {
    ring r;
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    bool polled = false;
    auto poller = [&]() -> task<void> {
        io_result ev = co_await r.poll(rd.get(), POLLIN);
        CHECK((ev.res & POLLIN) != 0);
        polled = true;
    };
    dmuser::spawn(poller());
    auto writer = [&]() -> task<void> {
        co_await r.timeout(5ms);
        CHECK_FALSE(polled);
        CHECK(::write(wr.get(), "x", 1) == 1);
        while (!polled)
            co_await r.timeout(1ms);
    };
    r.run(writer());
    CHECK(polled);
}

namespace {
std::chrono::microseconds thread_cpu_time() {
    rusage ru{};
    ::getrusage(RUSAGE_THREAD, &ru);
    return std::chrono::seconds(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           std::chrono::microseconds(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}
} // namespace

TEST_CASE("ring: busy polling completes what comes during the spin, then sleeps") {
    ring r;
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    // A long spin: the read completes while the ring polls.
    r.set_busy_poll(2s);
    // Catch2's assertions are not thread-safe: the writer only records its result.
    ssize_t wrote = 0;
    std::thread writer([&] {
        std::this_thread::sleep_for(20ms);
        wrote = ::write(wr.get(), "y", 1);
    });
    char c = 0;
    auto reader = [&]() -> task<int> {
        co_return (co_await r.read(rd.get(), std::as_writable_bytes(std::span(&c, 1)), 0)).res;
    };
    CHECK(r.run(reader()) == 1);
    CHECK(c == 'y');
    writer.join();
    CHECK(wrote == 1);
    // A short spin: nothing comes for 200 ms, so the thread must sleep, not spin, the rest.
    r.set_busy_poll(1ms);
    auto cpu0 = thread_cpu_time();
    auto wait = [&]() -> task<int> { co_return (co_await r.timeout(200ms)).res; };
    CHECK(r.run(wait()) == -ETIME);
    CHECK(thread_cpu_time() - cpu0 < 100ms);
}

TEST_CASE("ring: timeout fires with -ETIME after its delay") {
    ring r;
    auto t0 = std::chrono::steady_clock::now();
    auto t = [&]() -> task<int> { co_return (co_await r.timeout(20ms)).res; };
    CHECK(r.run(t()) == -ETIME);
    CHECK(std::chrono::steady_clock::now() - t0 >= 20ms);
}

TEST_CASE("ring: cancel ends a pending read with -ECANCELED, buffer untouched after") {
    ring r;
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    std::byte buf[16];
    std::uint64_t id = 0;
    int read_res = 1;
    auto reader = [&]() -> task<void> {
        dmuser::io_op op = r.read(rd.get(), buf, 0);
        id = op.id();
        read_res = (co_await op).res;
    };
    dmuser::spawn(reader());
    auto canceller = [&]() -> task<int> {
        co_await r.timeout(2ms);
        co_return (co_await r.cancel(id)).res;
    };
    CHECK(r.run(canceller()) == 0);
    auto settle = [&]() -> task<void> { co_await r.timeout(1ms); };
    r.run(settle());
    CHECK(read_res == -ECANCELED);
    CHECK(r.cancel_fd(rd.get()).id() != 0); // an op never awaited submits nothing
}

TEST_CASE("ring: cancel_fd cancels every operation on the fd") {
    ring r;
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    std::byte bufs[4][8];
    int cancelled = 0;
    auto reader = [&](std::byte* at) -> task<void> {
        if ((co_await r.read(rd.get(), std::span(at, 8), 0)).res == -ECANCELED)
            ++cancelled;
    };
    for (auto& b : bufs)
        dmuser::spawn(reader(b));
    auto t = [&]() -> task<int> {
        co_await r.timeout(2ms);
        int n = (co_await r.cancel_fd(rd.get())).res;
        co_await r.timeout(2ms);
        co_return n;
    };
    CHECK(r.run(t()) == 4);
    CHECK(cancelled == 4);
}

TEST_CASE("ring: a full submission queue is flushed and retried") {
    ring r(4); // 4 SQEs, 64 operations queued before the loop runs
    temp_file f;
    std::vector<std::byte> data(64 * 512);
    for (std::size_t i = 0; i < data.size(); ++i)
        data[i] = static_cast<std::byte>(i / 512);
    int done = 0;
    auto writer = [&](int k) -> task<void> {
        auto part = std::span(data).subspan(k * 512, 512);
        if ((co_await r.write(f.fd.get(), part, k * 512)).res == 512)
            ++done;
    };
    for (int i = 0; i < 64; ++i)
        dmuser::spawn(writer(i));
    auto wait = [&]() -> task<void> {
        while (done < 64)
            co_await r.timeout(1ms);
    };
    r.run(wait());
    std::vector<std::byte> back(data.size());
    REQUIRE(::pread(f.fd.get(), back.data(), back.size(), 0) == static_cast<ssize_t>(back.size()));
    CHECK(back == data);
}

TEST_CASE("ring: post runs a function on the ring's thread, from another thread") {
    ring r;
    std::thread::id ran_on;
    std::thread other([&] {
        r.post([&] {
            ran_on = std::this_thread::get_id();
            r.stop();
        });
    });
    r.run();
    other.join();
    CHECK(ran_on == std::this_thread::get_id());
}

TEST_CASE("ring: destruction cancels and reaps operations still in flight") {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    int res = 1;
    auto buffer = std::make_unique<std::byte[]>(64);
    {
        ring r;
        auto reader = [&]() -> task<void> {
            res = (co_await r.read(rd.get(), std::span(buffer.get(), 64), 0)).res;
        };
        dmuser::spawn(reader());
        CHECK(r.in_flight() >= 2); // the read and the ring's own wake-up
    }
    CHECK(res == -ECANCELED);
    // The pipe's data after the ring is gone lands nowhere.
    CHECK(::write(wr.get(), "late", 4) == 4);
}

TEST_CASE("this_ring is the ring of the calling thread") {
    CHECK(dmuser::ring::current() == nullptr);
    CHECK_THROWS_AS(dmuser::this_ring(), std::logic_error);
    {
        ring r;
        CHECK(&dmuser::this_ring() == &r);
    }
    CHECK(dmuser::ring::current() == nullptr);
}

TEST_CASE("file_io: read_at and write_at move whole buffers; past EOF reads zeros") {
    ring r;
    temp_file f;
    std::vector<std::byte> data(100000);
    for (std::size_t i = 0; i < data.size(); ++i)
        data[i] = static_cast<std::byte>(i * 7);
    auto t = [&]() -> task<bool> {
        REQUIRE_FALSE(co_await dmuser::write_at(f.fd.get(), data, 4096));
        std::vector<std::byte> back(data.size() + 5000, std::byte{0xff});
        REQUIRE_FALSE(co_await dmuser::read_at(f.fd.get(), back, 4096));
        for (std::size_t i = data.size(); i < back.size(); ++i)
            if (back[i] != std::byte{0})
                co_return false;
        back.resize(data.size());
        co_return back == data;
    };
    CHECK(r.run(t()));
    auto bad = [&]() -> task<std::error_code> {
        std::byte b[4];
        co_return co_await dmuser::read_at(-1, b, 0);
    };
    CHECK(r.run(bad()) == std::errc::bad_file_descriptor);
}

TEST_CASE("ring: destruction ends even if a coroutine reads again after every cancellation") {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    std::byte buf[8];
    int cancellations = 0;
    // As a channel loop that has not been told to stop: -ECANCELED means "read again".
    auto stubborn = [&]() -> task<void> {
        while ((co_await ring::current()->read(rd.get(), buf, 0)).res == -ECANCELED)
            ++cancellations;
    };
    task<void> t = stubborn(); // outlives the ring: its frame is ours to free
    {
        ring r;
        t.handle().resume();
        r.run_once(false);
        CHECK(r.in_flight() >= 2);
    }
    CHECK(cancellations > 0);
    CHECK(!t.done()); // left suspended on a refused read, never in the kernel again
}

TEST_CASE("ring: destruction ends although a CQE it counts never comes") {
    dmuser::completion never;
    never.on_complete = [](dmuser::completion*) noexcept {};
    {
        ring r;
        // A NOP that succeeds posts no CQE: to the ring, a CQE the kernel dropped.
        io_uring_sqe nop{};
        io_uring_prep_nop(&nop);
        nop.flags |= IOSQE_CQE_SKIP_SUCCESS;
        r.submit(never, nop);
        r.run_once(false);
        CHECK(r.in_flight() >= 2);
    }
    SUCCEED("the ring closed");
}

TEST_CASE("ring: run(task) that throws leaves the task's frame alive while its read is in flight") {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    std::byte buf[8];
    int res = 1;
    bool frame_freed = false;
    struct on_free {
        bool& flag;
        ~on_free() { flag = true; }
    };
    std::optional<ring> r(std::in_place);
    auto reader = [&]() -> task<void> {
        on_free guard{frame_freed};
        res = (co_await r->read(rd.get(), buf, 0)).res;
    };
    // A loop turn that throws: a SINGLE_ISSUER ring entered from another thread fails
    // with EEXIST, after the task has queued its read.
    bool threw = false;
    std::thread other([&] {
        try {
            r->run(reader());
        } catch (const std::exception&) {
            // A debug build refuses at once (std::logic_error); otherwise the kernel does.
            threw = true;
        }
    });
    other.join();
    if (!threw) {
        WARN("the kernel lacks IORING_SETUP_SINGLE_ISSUER: no loop turn threw");
        return;
    }
    CHECK(!frame_freed);
    r.reset(); // submits the read, cancels it, and the task ends
    CHECK(res == -ECANCELED);
    CHECK(frame_freed);
}

TEST_CASE("ring: current() stays right when rings go in the order they were made") {
    auto first = std::make_unique<ring>();
    auto second = std::make_unique<ring>();
    CHECK(ring::current() == second.get());
    first.reset();
    CHECK(ring::current() == second.get());
    second.reset();
    CHECK(ring::current() == nullptr);
}

TEST_CASE("ring: a cancel by the id of a finished op misses the op that reuses its address") {
    ring r;
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    // One storage for both operations, so the second one has the first one's address.
    std::optional<dmuser::io_op> op;
    auto first = [&]() -> task<std::uint64_t> {
        dmuser::io_op& nop =
            op.emplace(r, [](io_uring_sqe* s, dmuser::io_op*) { io_uring_prep_nop(s); });
        REQUIRE((co_await nop).res == 0);
        co_return op->id();
    };
    const std::uint64_t stale = r.run(first());
    const dmuser::io_op* first_address = &*op;
    op.reset();

    std::byte buf[1];
    constexpr int not_done = -1000;
    int read_res = not_done;
    auto reader = [&]() -> task<void> {
        dmuser::io_op& read = op.emplace(r, [&](io_uring_sqe* s, dmuser::io_op*) {
            io_uring_prep_read(s, rd.get(), buf, sizeof buf, 0);
        });
        read_res = (co_await read).res; // (GCC 12 copies the awaitable of `co_await *op`)
    };
    dmuser::spawn(reader()); // its read is queued before the cancel below
    REQUIRE(&*op == first_address);
    CHECK(op->id() != stale);

    auto cancel = [&]() -> task<int> { co_return (co_await r.cancel(stale)).res; };
    CHECK(r.run(cancel()) == -ENOENT);
    CHECK(read_res == not_done); // still waiting for its byte
    const char byte = 'x';
    REQUIRE(::write(wr.get(), &byte, 1) == 1);
    while (read_res == not_done)
        r.run_once();
    CHECK(read_res == 1);
}

TEST_CASE("ring: a debug build refuses a ring driven from another thread") {
#ifdef NDEBUG
    WARN("NDEBUG: the owner-thread check is compiled out");
#else
    ring r;
    int refused = 0;
    std::thread other([&] {
        try {
            r.run_once(false);
        } catch (const std::logic_error&) {
            ++refused;
        }
        try {
            r.run();
        } catch (const std::logic_error&) {
            ++refused;
        }
    });
    other.join();
    CHECK(refused == 2);
    // The ring still works on its own thread.
    auto t = [&]() -> task<int> { co_return (co_await r.timeout(1ms)).res; };
    CHECK(r.run(t()) == -ETIME);
#endif
}

TEST_CASE("ring: readv_when_ready reads once ready; with EPOLLEXCLUSIVE a wake-up wakes one") {
    ring r;
    dmuser::unique_fd efd(::eventfd(0, EFD_CLOEXEC));
    REQUIRE(efd);
    std::uint64_t value[2] = {0, 0};
    iovec iov[2] = {{&value[0], sizeof value[0]}, {&value[1], sizeof value[1]}};
    int res[2] = {1, 1};
    // RWF_NOWAIT: a poll woken for nothing would end at once, its read with -EAGAIN.
    auto waiter = [&](int i) -> task<void> {
        res[i] = (co_await r.readv_when_ready(efd.get(), EPOLLIN | EPOLLEXCLUSIVE,
                                              std::span<const iovec>(&iov[i], 1), 0, RWF_NOWAIT))
                     .res;
    };
    dmuser::spawn(waiter(0));
    dmuser::spawn(waiter(1));
    r.run_once(false); // both polls armed; nothing to read yet
    CHECK(res[0] == 1);
    CHECK(res[1] == 1);
    auto done = [&] { return (res[0] != 1) + (res[1] != 1); };
    std::uint64_t one = 1;
    // eventfd's write wakes its waiters inside write(): every poll it wakes has its work
    // queued before the ring is entered again.
    REQUIRE(::write(efd.get(), &one, sizeof one) == sizeof one);
    while (done() == 0)
        r.run_once(true);
    r.run_once(false);
    REQUIRE(done() == 1); // a poll without EPOLLEXCLUSIVE would have woken too
    const int first = res[0] != 1 ? 0 : 1;
    CHECK(res[first] == static_cast<int>(sizeof(std::uint64_t)));
    CHECK(value[first] == 1);
    REQUIRE(::write(efd.get(), &one, sizeof one) == sizeof one);
    while (done() < 2)
        r.run_once(true);
    CHECK(res[1 - first] == static_cast<int>(sizeof(std::uint64_t)));
    CHECK(value[1 - first] == 1);
}

// A poll that fires posts no CQE of its own where the kernel can skip it: the ring must
// count only the CQEs that come, or its shutdown waits for ones that never will.
TEST_CASE("ring: readv_when_ready leaves nothing counted in flight, read or cancelled") {
    ring r;
    const unsigned idle = r.in_flight(); // the ring's own wake-up read
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    std::byte buf[16];
    const iovec iov{buf, sizeof buf};
    REQUIRE(::write(wr.get(), "ab", 2) == 2);
    auto read_once = [&]() -> task<int> {
        co_return (co_await r.readv_when_ready(rd.get(), POLLIN, std::span(&iov, 1), 0)).res;
    };
    CHECK(r.run(read_once()) == 2); // ready at once
    CHECK(r.in_flight() == idle);
    constexpr int pending = 1000;
    std::uint64_t id = 0;
    int res = pending;
    auto waiter = [&]() -> task<void> {
        dmuser::polled_read_op op = r.readv_when_ready(rd.get(), POLLIN, std::span(&iov, 1), 0);
        id = op.id();
        res = (co_await op).res;
    };
    dmuser::spawn(waiter());
    r.run_once(false);
    CHECK(r.in_flight() > idle);
    REQUIRE(::write(wr.get(), "c", 1) == 1); // fires the poll; its read takes "c"
    while (res == pending)
        r.run_once(true);
    CHECK(res == 1);
    CHECK(r.in_flight() == idle);
    res = pending;
    dmuser::spawn(waiter());
    r.run_once(false);
    auto canceller = [&]() -> task<int> { co_return (co_await r.cancel(id)).res; };
    CHECK(r.run(canceller()) == 0);
    while (res == pending)
        r.run_once(true);
    CHECK(res == -ECANCELED);
    CHECK(r.in_flight() == idle);
}

TEST_CASE("ring: readv_polled_if without the poll is a plain readv, cancelled by its id") {
    ring r;
    const unsigned idle = r.in_flight();
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    std::byte buf[16];
    const iovec iov{buf, sizeof buf};
    REQUIRE(::write(wr.get(), "abc", 3) == 3);
    auto read_once = [&](bool poll_first) -> task<int> {
        co_return (co_await r.readv_polled_if(poll_first, rd.get(), POLLIN, std::span(&iov, 1), 0))
            .res;
    };
    CHECK(r.run(read_once(false)) == 3);
    CHECK(std::memcmp(buf, "abc", 3) == 0);
    CHECK(r.in_flight() == idle);
    // Nothing to read: a plain read of a pipe waits (in io_uring's poll); its id cancels it.
    std::uint64_t id = 0;
    int res = 1000;
    auto waiter = [&]() -> task<void> {
        dmuser::polled_read_op op =
            r.readv_polled_if(false, rd.get(), POLLIN, std::span(&iov, 1), 0);
        id = op.id();
        res = (co_await op).res;
    };
    dmuser::spawn(waiter());
    r.run_once(false);
    CHECK(r.in_flight() == idle + 1);
    auto canceller = [&]() -> task<int> { co_return (co_await r.cancel(id)).res; };
    CHECK(r.run(canceller()) == 0);
    while (res == 1000)
        r.run_once(true);
    CHECK(res == -ECANCELED);
    CHECK(r.in_flight() == idle);
}

TEST_CASE("ring: cancelling readv_when_ready's poll ends it with -ECANCELED, nothing read") {
    ring r;
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    std::byte buf[16];
    const iovec iov{buf, sizeof buf};
    std::uint64_t id = 0;
    int read_res = 1;
    auto reader = [&]() -> task<void> {
        dmuser::polled_read_op op = r.readv_when_ready(rd.get(), POLLIN, std::span(&iov, 1), 0);
        id = op.id();
        read_res = (co_await op).res;
    };
    dmuser::spawn(reader());
    auto canceller = [&]() -> task<int> { co_return (co_await r.cancel(id)).res; };
    CHECK(r.run(canceller()) == 0);
    while (read_res == 1)
        r.run_once(true);
    CHECK(read_res == -ECANCELED);
    CHECK(::write(wr.get(), "x", 1) == 1);
    CHECK(::read(rd.get(), buf, sizeof buf) == 1); // the byte is still there: not read
}
