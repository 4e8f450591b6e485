// task<T>, spawn() and the frame cache.
#include <catch2/catch.hpp>
#include <dmuser/frame_allocator.hpp>
#include <dmuser/ring.hpp>
#include <dmuser/spawn.hpp>
#include <dmuser/task.hpp>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>

using dmuser::task;

namespace {

task<int> answer() {
    co_return 42;
}
task<int> add_one(int depth) {
    if (depth == 0)
        co_return 0;
    co_return 1 + co_await add_one(depth - 1);
}
task<void> thrower() {
    throw std::runtime_error("from a task");
    co_return;
}
task<std::unique_ptr<int>> move_only() {
    co_return std::make_unique<int>(7);
}

} // namespace

TEST_CASE("task is lazy and returns its value") {
    bool started = false;
    auto body = [&]() -> task<int> {
        started = true;
        co_return 5;
    };
    auto t = body();
    CHECK_FALSE(started);
    dmuser::ring r;
    CHECK(r.run(std::move(t)) == 5);
    CHECK(started);
    CHECK(r.run(answer()) == 42);
    CHECK(*r.run(move_only()) == 7);
}

TEST_CASE("task chains resume by symmetric transfer without growing the stack") {
    dmuser::ring r;
    // Each level completes synchronously: without symmetric transfer this would need
    // 100000 nested resume() frames and overflow the stack. GCC emits no tail call for
    // the transfer under ASan, so the sanitized build checks the result at a depth any
    // stack holds (TSan's likewise); the optimized build checks the stack property.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    constexpr int depth = 1000;
#else
    constexpr int depth = 100000;
#endif
    CHECK(r.run(add_one(depth)) == depth);
}

TEST_CASE("task propagates exceptions to its awaiter") {
    dmuser::ring r;
    auto outer = []() -> task<std::string> {
        try {
            co_await thrower();
        } catch (const std::runtime_error& e) {
            co_return std::string("caught: ") + e.what();
        }
        co_return "not thrown";
    };
    CHECK(r.run(outer()) == "caught: from a task");
    CHECK_THROWS_AS(r.run(thrower()), std::runtime_error);
}

TEST_CASE("a task destroyed before it runs frees its frame and never runs") {
    bool ran = false;
    {
        auto body = [&]() -> task<void> {
            ran = true;
            co_return;
        };
        auto t = body();
        CHECK(t.valid());
    }
    CHECK_FALSE(ran);
}

TEST_CASE("spawn reports a failure to its handler, never drops it") {
    dmuser::ring r;
    std::string seen_what, seen_error;
    dmuser::spawn(
        [](dmuser::ring& rr) -> task<void> {
            co_await rr.timeout(std::chrono::milliseconds(1));
            throw std::logic_error("late failure");
        }(r),
        "worker",
        [&](std::string_view what, std::exception_ptr e) {
            seen_what = what;
            seen_error = dmuser::describe(e);
        });
    CHECK(seen_what.empty()); // still waiting for its timeout
    r.run([](dmuser::ring& rr) -> task<void> {
        co_await rr.timeout(std::chrono::milliseconds(20));
    }(r));
    CHECK(seen_what == "worker");
    CHECK(seen_error == "late failure");
}

namespace {
std::string logged;
void capture(dmuser::log::level, std::string_view line) {
    logged += std::string(line) + "\n";
}
} // namespace

TEST_CASE("spawn's default handler logs the failure") {
    logged.clear();
    auto old = dmuser::log::set_sink(&capture);
    dmuser::spawn(thrower(), "background job");
    dmuser::log::set_sink(old);
    CHECK(logged.find("background job failed: from a task") != std::string::npos);
}

TEST_CASE("frame cache hands a freed block back for the same size class") {
    dmuser::detail::frame_cache cache;
    void* a = cache.allocate(200);
    cache.deallocate(a, 200);
    void* b = cache.allocate(250); // same 64-byte class (193..256)
    CHECK(a == b);
    void* big = cache.allocate(1 << 20); // beyond the classes: plain heap
    cache.deallocate(big, 1 << 20);
    cache.deallocate(b, 250);
}

TEST_CASE("frame cache: a frame freed after the thread's cache is gone goes back to the heap") {
    // Thread-locals are destroyed in the reverse order of their making: one made before
    // the frame cache outlives it, and a frame it frees then must not enter the dead cache
    // (it would leak, which LeakSanitizer reports, or be handed out by a dead object).
    struct frees_late {
        void* frame = nullptr;
        ~frees_late() {
            if (frame)
                dmuser::detail::deallocate_frame(frame, 200);
        }
    };
    std::thread([] {
        thread_local frees_late late; // made before this thread's frame cache
        late.frame = dmuser::detail::allocate_frame(200);
        // A frame freed while the cache lives is cached (and freed with it).
        dmuser::detail::deallocate_frame(dmuser::detail::allocate_frame(200), 200);
    }).join();
    // The leak, if any, is reported when the process exits (ASan).
}

TEST_CASE("task: co_await on an empty task, or on one awaited before, throws logic_error") {
    dmuser::ring r;
    auto await_it = [](task<int>& t) -> task<int> { co_return co_await t; };
    task<int> empty;
    CHECK_THROWS_AS(r.run(await_it(empty)), std::logic_error);

    task<int> once = answer();
    CHECK(r.run(await_it(once)) == 42);
    CHECK_THROWS_AS(r.run(await_it(once)), std::logic_error);

    // Awaited twice while the first await still waits: the second must not resume it.
    int p[2];
    REQUIRE(::pipe(p) == 0);
    dmuser::unique_fd rd(p[0]), wr(p[1]);
    auto slow = [&]() -> task<int> {
        std::byte b[1];
        co_return (co_await r.read(rd.get(), b, 0)).res;
    };
    task<int> pending = slow();
    int first = 0;
    auto first_await = [&]() -> task<void> { first = co_await pending; };
    dmuser::spawn(first_await(), "first await");
    CHECK_THROWS_AS(r.run(await_it(pending)), std::logic_error);
    REQUIRE(::write(wr.get(), "x", 1) == 1);
    auto settle = [&]() -> task<void> {
        while (first == 0)
            co_await r.timeout(std::chrono::milliseconds(1));
    };
    r.run(settle());
    CHECK(first == 1);
}
