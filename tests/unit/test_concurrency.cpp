// Concurrency for stores: completions from other threads (remote_completion, thread_pool),
// when_all, and the async locks (async_mutex, async_semaphore, range_lock), each on one
// ring and across the rings of several threads.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <dmuser/async_mutex.hpp>
#include <dmuser/async_semaphore.hpp>
#include <dmuser/range_lock.hpp>
#include <dmuser/remote_completion.hpp>
#include <dmuser/ring.hpp>
#include <dmuser/spawn.hpp>
#include <dmuser/thread_pool.hpp>
#include <dmuser/when_all.hpp>
#include <future>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using dmuser::ring;
using dmuser::task;
using namespace std::chrono_literals;

namespace {

// A turn of the ring: lets other coroutines run in between.
task<void> yield_turn(ring& r) {
    co_await r.timeout(0ns);
}

} // namespace

TEST_CASE("remote_completion: completed on another thread, the coroutine resumes on its ring") {
    ring r;
    const auto ring_thread = std::this_thread::get_id();
    dmuser::remote_completion<int> done;
    std::thread other;
    auto t = [&]() -> task<std::thread::id> {
        other = std::thread([&] { done.complete(42); });
        int v = co_await done;
        CHECK(v == 42);
        co_return std::this_thread::get_id();
    };
    CHECK(r.run(t()) == ring_thread);
    other.join();
}

TEST_CASE("remote_completion: completed before the co_await, or from inside the start call") {
    ring r;
    auto t = [&]() -> task<std::string> {
        dmuser::remote_completion<std::string> early;
        early.complete("early");
        CHECK(early.ready());
        std::string a = co_await early;
        dmuser::remote_completion<> inline_done;
        [](void* arg) { static_cast<dmuser::remote_completion<>*>(arg)->complete(); }(&inline_done);
        co_await inline_done;
        co_return a;
    };
    CHECK(r.run(t()) == "early");
}

TEST_CASE("remote_completion: many at once from many threads, none lost") {
    ring r;
    constexpr int count = 2000;
    std::vector<std::optional<dmuser::remote_completion<int>>> done(count);
    for (auto& d : done)
        d.emplace();
    std::atomic<int> sum{0};
    auto one = [&](int i) -> task<void> { sum += co_await *done[i]; };
    auto all = [&]() -> task<void> {
        std::vector<task<void>> each;
        for (int i = 0; i < count; ++i)
            each.push_back(one(i));
        std::thread a([&] {
            for (int i = 0; i < count; i += 2)
                done[i]->complete(i);
        });
        std::thread b([&] {
            for (int i = 1; i < count; i += 2)
                done[i]->complete(i);
        });
        co_await dmuser::when_all(std::move(each));
        a.join();
        b.join();
    };
    r.run(all());
    CHECK(sum == count * (count - 1) / 2);
}

TEST_CASE("remote_completion: a ring's destruction waits for a completion still to come") {
    std::atomic<bool> closing{false};
    std::atomic<int> got{0};
    std::thread late;
    {
        ring r;
        auto waiter = [&](dmuser::remote_completion<int>& done) -> task<void> {
            got = co_await done;
        };
        auto* done =
            new dmuser::remote_completion<int>; // lives past the scope, as a library's would
        std::unique_ptr<dmuser::remote_completion<int>> owner(done);
        dmuser::spawn(waiter(*done), "waiter");
        r.run_once(false);
        late = std::thread([&, done] {
            while (!closing)
                std::this_thread::yield();
            std::this_thread::sleep_for(20ms); // let ~ring get to its wait
            done->complete(7);
        });
        closing = true;
        // ~ring now, then ~owner: the completion must come before the ring is gone.
        r.~ring();
        new (&r) ring; // a ring for the scope's own destructor
        CHECK(got == 7);
    }
    late.join();
}

TEST_CASE("thread_pool: blocking work runs off the ring and comes back with its result") {
    ring r;
    dmuser::thread_pool pool(2);
    const auto ring_thread = std::this_thread::get_id();
    auto t = [&]() -> task<int> {
        std::thread::id worker;
        int v = co_await pool.run([&] {
            worker = std::this_thread::get_id();
            return 6 * 7;
        });
        CHECK(worker != ring_thread);
        CHECK(std::this_thread::get_id() == ring_thread);
        co_await pool.run([] {}); // void work
        co_return v;
    };
    CHECK(r.run(t()) == 42);
}

TEST_CASE("thread_pool: an exception in the work is rethrown by the co_await") {
    ring r;
    dmuser::thread_pool pool(1);
    auto t = [&]() -> task<void> {
        co_await pool.run([]() -> int { throw std::runtime_error("backend down"); });
    };
    CHECK_THROWS_WITH(r.run(t()), "backend down");
}

TEST_CASE("thread_pool: many jobs in flight at once from one ring") {
    ring r;
    dmuser::thread_pool pool(3);
    auto job = [&](int i) -> task<int> { co_return co_await pool.run([i] { return i * i; }); };
    auto t = [&]() -> task<long> {
        std::vector<task<int>> jobs;
        for (int i = 0; i < 500; ++i)
            jobs.push_back(job(i));
        long sum = 0;
        for (int v : co_await dmuser::when_all(std::move(jobs)))
            sum += v;
        co_return sum;
    };
    CHECK(r.run(t()) == 41541750L); // sum of i*i for i < 500
}

TEST_CASE("when_all: results in argument order, whatever order the tasks end in") {
    ring r;
    auto after = [&](std::chrono::milliseconds d, int v) -> task<int> {
        co_await r.timeout(d);
        co_return v;
    };
    auto nothing = [&]() -> task<void> { co_await yield_turn(r); };
    auto t = [&]() -> task<void> {
        auto [a, b, c] = co_await dmuser::when_all(after(20ms, 1), after(1ms, 2), nothing());
        CHECK(a == 1);
        CHECK(b == 2);
        (void)c;
        auto none = co_await dmuser::when_all(std::vector<task<int>>{});
        CHECK(none.empty());
        auto instant = [](int v) -> task<int> { co_return v; };
        auto [x, y] = co_await dmuser::when_all(instant(3), instant(4));
        CHECK(x + y == 7);
    };
    r.run(t());
}

TEST_CASE("when_all: the first exception is rethrown once every task has ended") {
    ring r;
    std::atomic<int> ended{0};
    auto fails = [&](const char* why) -> task<int> {
        co_await yield_turn(r);
        ++ended;
        throw std::runtime_error(why);
    };
    auto slow = [&]() -> task<int> {
        co_await r.timeout(10ms);
        ++ended;
        co_return 1;
    };
    auto t = [&]() -> task<void> {
        std::vector<task<int>> v;
        v.push_back(slow());
        v.push_back(fails("first"));
        v.push_back(fails("second"));
        co_await dmuser::when_all(std::move(v));
    };
    CHECK_THROWS_WITH(r.run(t()), "first");
    CHECK(ended == 3);
}

namespace {

// `workers` threads, each with a ring running `per_thread` coroutines of body(ring).
template <typename Body>
void on_rings(unsigned workers, unsigned per_thread, Body body) {
    std::vector<std::thread> threads;
    for (unsigned w = 0; w < workers; ++w)
        threads.emplace_back([&] {
            ring r;
            std::vector<task<void>> all;
            for (unsigned i = 0; i < per_thread; ++i)
                all.push_back(body(r));
            r.run(dmuser::when_all(std::move(all)));
        });
    for (auto& t : threads)
        t.join();
}

} // namespace

TEST_CASE("async_mutex: one holder at a time across the rings of three threads") {
    dmuser::async_mutex m;
    std::atomic<int> inside{0}, overlaps{0};
    long counter = 0; // guarded by m only
    on_rings(3, 50, [&](ring& r) -> task<void> {
        for (int i = 0; i < 20; ++i) {
            auto held = co_await m.scoped_lock();
            if (++inside != 1)
                ++overlaps;
            long seen = counter;
            co_await yield_turn(r); // others run, and must wait
            counter = seen + 1;
            --inside;
        }
    });
    CHECK(overlaps == 0);
    CHECK(counter == 3 * 50 * 20);
    CHECK(m.try_lock());
    m.unlock();
}

TEST_CASE("async_mutex: waiters get the lock in the order they came") {
    ring r;
    dmuser::async_mutex m;
    std::vector<int> order;
    auto waiter = [&](int id) -> task<void> {
        co_await m.lock();
        order.push_back(id);
        m.unlock();
    };
    auto t = [&]() -> task<void> {
        co_await m.lock();
        std::vector<task<void>> w;
        for (int i = 0; i < 5; ++i)
            w.push_back(waiter(i));
        auto all = dmuser::when_all(std::move(w));
        auto release = [&]() -> task<void> {
            co_await yield_turn(r); // every waiter has queued by now
            CHECK(order.empty());
            m.unlock();
        };
        co_await dmuser::when_all(std::move(all), release());
    };
    r.run(t());
    CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
}

TEST_CASE("async_semaphore: never more holders than units, across threads") {
    dmuser::async_semaphore units(3);
    std::atomic<int> holding{0}, most{0};
    on_rings(2, 40, [&](ring& r) -> task<void> {
        for (int i = 0; i < 10; ++i) {
            co_await units.acquire();
            int now = ++holding;
            int prev = most.load();
            while (now > prev && !most.compare_exchange_weak(prev, now)) {
            }
            co_await yield_turn(r);
            --holding;
            units.release();
        }
    });
    CHECK(most <= 3);
    CHECK(most >= 1);
    CHECK(units.available() == 3);
}

TEST_CASE("async_semaphore: release(n) lets n waiters in, in order, and keeps the rest") {
    ring r;
    dmuser::async_semaphore units(0);
    std::vector<int> order;
    auto waiter = [&](int id) -> task<void> {
        co_await units.acquire();
        order.push_back(id);
    };
    auto t = [&]() -> task<void> {
        std::vector<task<void>> w;
        for (int i = 0; i < 4; ++i)
            w.push_back(waiter(i));
        auto all = dmuser::when_all(std::move(w));
        auto release = [&]() -> task<void> {
            co_await yield_turn(r);
            units.release(2);
            co_await yield_turn(r);
            co_await yield_turn(r);
            CHECK(order == std::vector<int>{0, 1});
            units.release(3); // two waiters, one unit left over
        };
        co_await dmuser::when_all(std::move(all), release());
    };
    r.run(t());
    CHECK(order == std::vector<int>{0, 1, 2, 3});
    CHECK(units.available() == 1);
}

TEST_CASE("range_lock: overlapping ranges wait, disjoint ones go ahead") {
    ring r;
    dmuser::range_lock locks;
    std::vector<std::string> events;
    auto hold = [&](std::string name, std::uint64_t off, std::uint64_t len,
                    int turns) -> task<void> {
        auto held = co_await locks.lock(off, len);
        events.push_back(name + "+");
        for (int i = 0; i < turns; ++i)
            co_await yield_turn(r);
        events.push_back(name + "-");
    };
    auto t = [&]() -> task<void> {
        // a holds [0,100); b overlaps it and waits; c is disjoint and goes at once;
        // d overlaps b (a waiter before it) but not a: it waits for b, so b is not starved.
        co_await dmuser::when_all(hold("a", 0, 100, 3), hold("b", 50, 100, 1),
                                  hold("c", 200, 10, 1), hold("d", 120, 10, 1));
    };
    r.run(t());
    auto pos = [&](const std::string& e) {
        return std::find(events.begin(), events.end(), e) - events.begin();
    };
    CHECK(pos("c+") < pos("a-")); // disjoint: did not wait for a
    CHECK(pos("b+") > pos("a-")); // overlapping: did
    CHECK(pos("d+") > pos("b-")); // behind the earlier waiter it overlaps
    CHECK(locks.held() == 0);
}

TEST_CASE("range_lock: no two overlapping holders across threads") {
    dmuser::range_lock locks;
    constexpr int units = 8;
    std::atomic<int> holders[units] = {};
    std::atomic<int> overlaps{0};
    std::atomic<unsigned> seed{1};
    on_rings(2, 30, [&](ring& r) -> task<void> {
        unsigned x = seed.fetch_add(7919);
        for (int i = 0; i < 15; ++i) {
            x = x * 1103515245u + 12345u;
            const int first = int((x >> 8) % units);
            const int count = 1 + int((x >> 16) % 3);
            const int last = std::min(units, first + count);
            auto held = co_await locks.lock(std::uint64_t(first) * 4096,
                                            std::uint64_t(last - first) * 4096);
            for (int u = first; u < last; ++u)
                if (++holders[u] != 1)
                    ++overlaps;
            co_await yield_turn(r);
            for (int u = first; u < last; ++u)
                --holders[u];
        }
    });
    CHECK(overlaps == 0);
    CHECK(locks.held() == 0);
}
