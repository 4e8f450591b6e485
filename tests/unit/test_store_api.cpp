// What a store may ask of the server beyond the BlockStore basics: the request's context,
// per-thread state, and completions that come from other threads (a callback library, a
// thread pool), each through the real server and the fake kernel.
#include "server_fixture.hpp"

#include <dmuser/remote_completion.hpp>
#include <dmuser/thread_pool.hpp>
#include <map>
#include <set>

using dmuser::request_context;
using dmuser::task;
using dmuser::testing::fake_kernel;
using test::pattern;
using test::running_server;

namespace {

// Records what the context says of each request.
struct context_store : test::mem_store {
    using mem_store::mem_store;
    std::mutex m;
    std::map<std::uint64_t, std::uint64_t> flags_by_offset;
    std::set<unsigned> threads_seen;
    bool stop_seen_early = false;
    std::atomic<int> wrong{0}; // Catch2 asserts only on the test's thread: count here

    void note(const dmuser::request_info& ctx, std::uint64_t off) {
        std::lock_guard lock(m);
        flags_by_offset[off] = ctx.flags;
        threads_seen.insert(ctx.thread);
        stop_seen_early |= ctx.stop_requested();
        wrong += ctx.deadline() != std::chrono::steady_clock::time_point::max();
    }
    void read(request_context<>& ctx, std::uint64_t off, std::span<std::byte> out) {
        note(ctx, off);
        wrong += ctx.type != DM_USER_REQ_MAP_READ;
        mem_store::read(off, out);
    }
    void write(request_context<>& ctx, std::uint64_t off, std::span<const std::byte> in) {
        note(ctx, off);
        wrong += ctx.type != DM_USER_REQ_MAP_WRITE;
        mem_store::write(off, in);
    }
    // A store may mix the forms: this member takes no context.
    void discard(std::uint64_t off, std::uint64_t len) { mem_store::discard(off, len); }
};

} // namespace

TEST_CASE("store API: members that take a request_context get the request's flags and thread") {
    fake_kernel k;
    context_store store(k.options().device_bytes);
    {
        running_server s(store, k, {.threads = 2, .channels = 4});
        auto data = pattern(4096, 1);
        CHECK(k.write(0, data, DM_USER_REQ_MAP_FLAG_SYNC | DM_USER_REQ_MAP_FLAG_META).result ==
              DM_USER_RESP_SUCCESS);
        CHECK(k.read(0, 4096, DM_USER_REQ_MAP_FLAG_RAHEAD).data == data);
        std::vector<std::future<dmuser::testing::fake_response>> many;
        for (int i = 1; i <= 64; ++i)
            many.push_back(k.submit({.type = DM_USER_REQ_MAP_WRITE,
                                     .sector = std::uint64_t(i) * 8,
                                     .len = 4096,
                                     .payload = pattern(4096, i)}));
        for (auto& f : many)
            CHECK(f.get().result == DM_USER_RESP_SUCCESS);
        CHECK(k.op(DM_USER_REQ_MAP_DISCARD, 4096, 4096).result == DM_USER_RESP_SUCCESS);
        CHECK(s.stop() == 0);
    }
    // Read and write carried their own flags; FUA/PREFLUSH are the SDK's to act on.
    CHECK(store.flags_by_offset.size() == 65);
    CHECK((store.flags_by_offset[0] & DM_USER_REQ_MAP_FLAG_RAHEAD) != 0);
    for (unsigned t : store.threads_seen)
        CHECK(t < 2);
    CHECK_FALSE(store.stop_seen_early);
    CHECK(store.wrong == 0);
    CHECK(k.violations().empty());
}

namespace {

// One "connection" per server thread, made and closed on that thread.
struct per_thread_store {
    struct thread_state {
        unsigned index = 0;
        std::thread::id made_on;
        std::atomic<int>* closed = nullptr;
        std::uint64_t requests = 0;
        thread_state(unsigned i, std::atomic<int>* c)
            : index(i), made_on(std::this_thread::get_id()), closed(c) {}
        thread_state(thread_state&& o) noexcept
            : index(o.index), made_on(o.made_on), closed(std::exchange(o.closed, nullptr)),
              requests(o.requests) {}
        ~thread_state() {
            // Counted as closed only on the thread that made it.
            if (closed && std::this_thread::get_id() == made_on)
                ++*closed;
        }
    };
    std::vector<std::byte> mem;
    std::atomic<int> opened{0}, closed{0};
    std::atomic<int> wrong_thread{0};
    std::atomic<std::uint64_t> served{0};

    explicit per_thread_store(std::size_t bytes) : mem(bytes) {}
    std::uint64_t size() const { return mem.size(); }
    thread_state open_thread(unsigned index) {
        ++opened;
        return thread_state(index, &closed);
    }
    void count(request_context<thread_state>& ctx) {
        if (ctx.state.index != ctx.thread || ctx.state.made_on != std::this_thread::get_id())
            ++wrong_thread;
        ++ctx.state.requests;
        ++served;
    }
    void read(request_context<thread_state>& ctx, std::uint64_t off, std::span<std::byte> out) {
        count(ctx);
        std::memcpy(out.data(), mem.data() + off, out.size());
    }
    void write(request_context<thread_state>& ctx, std::uint64_t off,
               std::span<const std::byte> in) {
        count(ctx);
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
};

// A store whose default-constructed state counts its requests.
struct default_state_store : test::mem_store {
    struct thread_state {
        int requests = 0;
    };
    using mem_store::mem_store;
    void read(request_context<thread_state>& ctx, std::uint64_t off, std::span<std::byte> out) {
        ++ctx.state.requests;
        mem_store::read(off, out);
    }
    using mem_store::write;
};

} // namespace

TEST_CASE("store API: per-thread state is made on its thread, used there, and closed there") {
    fake_kernel k;
    per_thread_store store(k.options().device_bytes);
    {
        running_server s(store, k, {.threads = 3, .channels = 6});
        CHECK(store.opened == 3);
        std::vector<std::future<dmuser::testing::fake_response>> many;
        for (int i = 0; i < 200; ++i)
            many.push_back(k.submit({.type = DM_USER_REQ_MAP_WRITE,
                                     .sector = std::uint64_t(i % 50) * 8,
                                     .len = 4096,
                                     .payload = pattern(4096, i)}));
        for (auto& f : many)
            CHECK(f.get().result == DM_USER_RESP_SUCCESS);
        CHECK(k.read(0, 4096).result == DM_USER_RESP_SUCCESS);
        CHECK(store.closed == 0);
        CHECK(s.stop() == 0);
    }
    CHECK(store.closed == 3);
    CHECK(store.served == 201);
    CHECK(store.wrong_thread == 0);

    fake_kernel k2;
    default_state_store plain(k2.options().device_bytes);
    running_server s2(plain, k2);
    CHECK(k2.read(0, 512).result == DM_USER_RESP_SUCCESS);
    CHECK(s2.stop() == 0);
}

namespace {

// A state whose making fails on one thread: the server reports it and stops.
struct failing_state_store : test::mem_store {
    struct thread_state {};
    using mem_store::mem_store;
    thread_state open_thread(unsigned index) {
        if (index == 1)
            throw std::runtime_error("cannot connect");
        return {};
    }
};

} // namespace

TEST_CASE("store API: a thread state that cannot be made stops the server with an error") {
    fake_kernel k;
    failing_state_store store(k.options().device_bytes);
    dmuser::server srv(store, k, test::quiet({.threads = 2}));
    CHECK(srv.run() == 1);
}

namespace {

// A backend that completes on threads of its own, like librbd: each call starts the work
// and returns; a callback later reports the result.
class callback_backend {
public:
    using callback = void (*)(void* arg, int result);
    explicit callback_backend(std::size_t bytes) : mem_(bytes), worker_([this] { run(); }) {}
    ~callback_backend() {
        {
            std::lock_guard lock(m_);
            stopping_ = true;
        }
        cv_.notify_one();
        worker_.join();
    }
    void start_read(std::uint64_t off, std::span<std::byte> out, callback cb, void* arg) {
        enqueue([=, this] {
            std::memcpy(out.data(), mem_.data() + off, out.size());
            cb(arg, int(out.size()));
        });
    }
    void start_write(std::uint64_t off, std::span<const std::byte> in, callback cb, void* arg) {
        enqueue([=, this] {
            std::memcpy(mem_.data() + off, in.data(), in.size());
            cb(arg, int(in.size()));
        });
    }
    std::size_t size() const { return mem_.size(); }

private:
    void enqueue(std::function<void()> fn) {
        {
            std::lock_guard lock(m_);
            queue_.push_back(std::move(fn));
        }
        cv_.notify_one();
    }
    void run() {
        for (;;) {
            std::function<void()> fn;
            {
                std::unique_lock lock(m_);
                cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
                if (queue_.empty())
                    return;
                fn = std::move(queue_.front());
                queue_.erase(queue_.begin());
            }
            fn();
        }
    }
    std::vector<std::byte> mem_;
    std::mutex m_;
    std::condition_variable cv_;
    std::vector<std::function<void()>> queue_;
    bool stopping_ = false;
    std::thread worker_;
};

struct callback_store {
    callback_backend& backend;
    dmuser::thread_pool& pool;
    std::uint64_t size() const { return backend.size(); }
    static void done(void* arg, int result) {
        static_cast<dmuser::remote_completion<int>*>(arg)->complete(result);
    }
    task<std::error_code> read(std::uint64_t off, std::span<std::byte> out) {
        dmuser::remote_completion<int> finished;
        backend.start_read(off, out, &done, &finished);
        if (co_await finished != int(out.size()))
            co_return std::make_error_code(std::errc::io_error);
        co_return std::error_code{};
    }
    task<std::error_code> write(std::uint64_t off, std::span<const std::byte> in) {
        dmuser::remote_completion<int> finished;
        backend.start_write(off, in, &done, &finished);
        co_return co_await finished == int(in.size()) ? std::error_code{}
                                                      : std::make_error_code(std::errc::io_error);
    }
    // A blocking call, off the ring.
    task<std::error_code> flush() {
        co_return co_await pool.run([] { return std::error_code{}; });
    }
};

} // namespace

TEST_CASE("store API: a callback library's completions resume each request on its own ring") {
    fake_kernel k;
    callback_backend backend(k.options().device_bytes);
    dmuser::thread_pool pool(2);
    callback_store store{backend, pool};
    running_server s(store, k, {.threads = 2, .channels = 4, .depth = 8});
    std::vector<std::future<dmuser::testing::fake_response>> writes;
    for (int i = 0; i < 128; ++i)
        writes.push_back(k.submit({.type = DM_USER_REQ_MAP_WRITE,
                                   .sector = std::uint64_t(i) * 16,
                                   .len = 8192,
                                   .payload = pattern(8192, i)}));
    for (auto& f : writes)
        CHECK(f.get().result == DM_USER_RESP_SUCCESS);
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
    for (int i = 0; i < 128; i += 17)
        CHECK(k.read(std::uint64_t(i) * 16 * 512, 8192).data == pattern(8192, i));
    CHECK(s.stop() == 0);
    CHECK(k.violations().empty());
}
