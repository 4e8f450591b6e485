// dmuser-microbench: the SDK's server, serving a RAM store, driven by the in-process fake
// kernel (include/dmuser/testing/). Measures requests per second and the server threads'
// CPU nanoseconds per request, by operation, size, queue depth and server threads.
//
//   dmuser-microbench --matrix [--seconds S] [--json FILE]     the whole table
//   dmuser-microbench --op read --size 4K --qd 32 --requests N --split
//                                                              one case, for callgrind
//
// --split runs the fake kernel and the load in a child process (exec'd, so valgrind does
// not follow it) and hands the channels over a socket: valgrind 3.19 keeps its lock
// across a blocking io_uring_enter, so an in-process fake would never get to run.
//
// CPU is read per thread from /proc/self/task/TID/schedstat, so the load generator's
// cost (the fake kernel's receiver thread and the submitter) is kept apart from the
// server's: "server ns/req" is what the daemon itself spends, system calls included.
#include "dmuser/server.hpp"
#include "dmuser/testing/fake_kernel.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <semaphore>
#include <span>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

// The store: the same shape as examples/ramdisk.cpp, READs lent straight from memory.
struct ram_store {
    std::vector<std::byte> mem;
    std::uint64_t size() const { return mem.size(); }
    void read(std::uint64_t off, std::span<std::byte> out) const {
        std::memcpy(out.data(), mem.data() + off, out.size());
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
    std::span<const std::byte> read_view(std::uint64_t off, std::uint64_t len) const {
        return {mem.data() + off, len};
    }
};

struct bench_case {
    bool write = false;
    std::uint64_t size = 4096;
    unsigned qd = 1;
    unsigned threads = 1;
    std::uint64_t requests = 0; // 0: timed, for `seconds`
    double seconds = 0.5;
};

struct bench_result {
    std::uint64_t requests = 0;
    double seconds = 0;
    double server_cpu_ns = 0;  // every thread but the load generator's
    double loadgen_cpu_ns = 0; // the fake kernel and the submitter
    std::uint64_t errors = 0;
    unsigned iou_workers = 0; // io_uring worker threads seen in the process at the end
};

// --- per-thread CPU ------------------------------------------------------------------
std::vector<pid_t> task_ids() {
    std::vector<pid_t> ids;
    if (DIR* d = ::opendir("/proc/self/task")) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.')
                ids.push_back(static_cast<pid_t>(std::atol(e->d_name)));
        ::closedir(d);
    }
    return ids;
}

std::string task_file(pid_t tid, const char* what) {
    std::ifstream f(fmt::format("/proc/self/task/{}/{}", tid, what));
    std::string s;
    std::getline(f, s);
    return s;
}

std::map<pid_t, std::uint64_t> cpu_by_task() {
    std::map<pid_t, std::uint64_t> out;
    for (pid_t t : task_ids())
        out[t] = std::strtoull(task_file(t, "schedstat").c_str(), nullptr, 10);
    return out;
}

// --- one case ----------------------------------------------------------------------
constexpr std::uint64_t store_bytes = 64u << 20;
dmuser::testing::fake_options fake_options_for(const bench_case& c);

bench_result run_case(const bench_case& c) {
    std::vector<pid_t> loadgen = task_ids(); // this thread
    dmuser::testing::fake_kernel kernel(fake_options_for(c));
    loadgen = task_ids(); // + the fake's receiver

    ram_store store{std::vector<std::byte>(store_bytes, std::byte{0x5a})};
    dmuser::server_options so;
    so.threads = c.threads;
    so.depth = std::max(1u, (c.qd + c.threads - 1) / c.threads); // room for every request
    so.handle_signals = false;
    so.io_flusher = false;
    dmuser::server<ram_store> srv(store, kernel, so);
    std::thread runner([&] { srv.run(); });
    while (!srv.ready())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));

    // The submitter keeps qd requests in flight: a completion hands back a credit.
    std::counting_semaphore<1 << 20> credits(c.qd);
    std::atomic<std::uint64_t> completed{0}, errors{0};
    std::atomic<bool> stop{false};
    std::vector<std::byte> payload(c.write ? c.size : 0, std::byte{0xa5});
    const std::uint64_t slots = store_bytes / c.size;
    std::atomic<pid_t> submitter_tid{0};
    std::thread submitter([&] {
        submitter_tid = static_cast<pid_t>(::gettid());
        std::uint64_t x = 0x9e3779b97f4a7c15ull, sent = 0;
        while (!stop) {
            credits.acquire();
            if (stop || (c.requests && sent == c.requests))
                break;
            x ^= x << 13, x ^= x >> 7, x ^= x << 17; // xorshift: random aligned offsets
            dmuser::testing::fake_request r;
            r.type = c.write ? DM_USER_REQ_MAP_WRITE : DM_USER_REQ_MAP_READ;
            r.sector = (x % slots) * c.size / 512;
            r.len = c.size;
            r.payload = payload;
            kernel.submit(std::move(r), [&](dmuser::testing::fake_response resp) {
                if (resp.result != DM_USER_RESP_SUCCESS)
                    errors.fetch_add(1);
                completed.fetch_add(1);
                credits.release();
            });
            ++sent;
        }
    });
    while (!submitter_tid)
        std::this_thread::yield();
    loadgen.push_back(submitter_tid);

    bench_result res;
    if (c.requests) {
        // Fixed count, for callgrind: no warm-up window, the caller subtracts two runs.
        while (completed < c.requests)
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        res.requests = completed;
    } else {
        // Warm up (frames recycled, pages touched), then measure a window.
        auto warm_until = clock_type::now() + std::chrono::milliseconds(100);
        while (clock_type::now() < warm_until)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        auto cpu0 = cpu_by_task();
        auto t0 = clock_type::now();
        std::uint64_t n0 = completed;
        std::this_thread::sleep_for(std::chrono::duration<double>(c.seconds));
        auto cpu1 = cpu_by_task();
        auto t1 = clock_type::now();
        res.requests = completed - n0;
        res.seconds = std::chrono::duration<double>(t1 - t0).count();
        for (auto& [tid, ns] : cpu1) {
            auto before = cpu0.count(tid) ? cpu0[tid] : 0;
            bool ours = std::find(loadgen.begin(), loadgen.end(), tid) != loadgen.end();
            (ours ? res.loadgen_cpu_ns : res.server_cpu_ns) += static_cast<double>(ns - before);
        }
    }
    for (pid_t t : task_ids())
        res.iou_workers += task_file(t, "comm").rfind("iou-wrk", 0) == 0;

    stop = true;
    credits.release(c.qd + 1);
    submitter.join();
    auto drain_until = clock_type::now() + std::chrono::seconds(10);
    while (kernel.pending_count() && clock_type::now() < drain_until)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    srv.stop();
    runner.join();
    res.errors = errors;
    return res;
}

// --- --split: the fake kernel in a child process ----------------------------------
void send_fd(int sock, int fd) {
    char byte = 'f';
    iovec iov{&byte, 1};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))]{};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl;
    m.msg_controllen = sizeof ctl;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (::sendmsg(sock, &m, 0) != 1)
        throw std::system_error(errno, std::system_category(), "sendmsg");
}

int receive_fd(int sock) {
    char byte;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))]{};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl;
    m.msg_controllen = sizeof ctl;
    if (::recvmsg(sock, &m, 0) != 1)
        throw std::system_error(errno, std::system_category(), "recvmsg");
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS)
        throw std::runtime_error("no channel fd from the load generator");
    int fd;
    std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

// The server's side: channels come from the child, the module looks like the fake's.
class remote_channels final : public dmuser::channel_source {
public:
    remote_channels(int sock, dmuser::testing::fake_options fo) : sock_(sock), fo_(fo) {}
    dmuser::unique_fd open_channel() override {
        char ask = 'o';
        if (::write(sock_, &ask, 1) != 1)
            throw std::system_error(errno, std::system_category(), "ask for a channel");
        return dmuser::unique_fd(receive_fd(sock_));
    }
    dmuser::module_info query(int) override {
        dmuser::module_info m;
        m.extensions = true;
        m.info.version_major = DM_USER_VERSION_MAJOR;
        m.info.features = fo_.features;
        m.info.ops = fo_.ops;
        m.info.max_payload = fo_.max_payload;
        m.info.device_sectors = fo_.device_bytes / 512;
        return m;
    }
    std::error_code set_channel_flags(int, std::uint64_t) override { return {}; }
    std::string describe() const override { return "fake dm-user (child process)"; }

private:
    int sock_;
    dmuser::testing::fake_options fo_;
};

dmuser::testing::fake_options fake_options_for(const bench_case& c) {
    dmuser::testing::fake_options fo;
    fo.device_bytes = store_bytes;
    fo.max_payload = std::max<std::uint64_t>(c.size, 1u << 20);
    return fo;
}

// Child: serve channel requests on `sock`, run c.requests at c.qd, then remove the target.
int load_generator(int sock, const bench_case& c) {
    dmuser::testing::fake_kernel kernel(fake_options_for(c));
    std::thread opener([&] {
        char ask;
        while (::read(sock, &ask, 1) == 1) {
            dmuser::unique_fd fd = kernel.open_channel();
            send_fd(sock, fd.get());
        }
    });
    opener.detach();
    std::counting_semaphore<1 << 20> credits(c.qd);
    std::atomic<std::uint64_t> completed{0}, errors{0};
    std::vector<std::byte> payload(c.write ? c.size : 0, std::byte{0xa5});
    const std::uint64_t slots = store_bytes / c.size;
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    for (std::uint64_t sent = 0; sent < c.requests; ++sent) {
        credits.acquire();
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        dmuser::testing::fake_request r;
        r.type = c.write ? DM_USER_REQ_MAP_WRITE : DM_USER_REQ_MAP_READ;
        r.sector = (x % slots) * c.size / 512;
        r.len = c.size;
        r.payload = payload;
        kernel.submit(std::move(r), [&](dmuser::testing::fake_response resp) {
            if (resp.result != DM_USER_RESP_SUCCESS)
                errors.fetch_add(1);
            completed.fetch_add(1);
            credits.release();
        });
    }
    while (completed < c.requests)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    kernel.remove_target();
    fmt::print("{} requests, {} errors\n", completed.load(), errors.load());
    std::fflush(stdout);
    return errors ? 1 : 0;
}

// Parent: the server alone in this process; the child is exec'd (valgrind stays here).
int run_split(const bench_case& c, const char* self) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        throw std::system_error(errno, std::system_category(), "socketpair");
    pid_t child = ::fork();
    if (child == 0) {
        ::close(sv[0]);
        std::string fd = std::to_string(::dup(sv[1])); // without CLOEXEC
        std::string op = c.write ? "write" : "read", size = std::to_string(c.size),
                    qd = std::to_string(c.qd), n = std::to_string(c.requests);
        ::execl(self, self, "--loadgen", fd.c_str(), "--op", op.c_str(), "--size", size.c_str(),
                "--qd", qd.c_str(), "--requests", n.c_str(), static_cast<char*>(nullptr));
        std::_Exit(127);
    }
    ::close(sv[1]);
    ram_store store{std::vector<std::byte>(store_bytes, std::byte{0x5a})};
    remote_channels source(sv[0], fake_options_for(c));
    dmuser::server_options so;
    so.threads = c.threads;
    so.depth = std::max(1u, (c.qd + c.threads - 1) / c.threads);
    so.handle_signals = false;
    so.io_flusher = false;
    int rc = dmuser::server<ram_store>(store, source, so).run();
    ::close(sv[0]);
    int status = 0;
    ::waitpid(child, &status, 0);
    return rc != 0 ? rc : (WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

std::string human(std::uint64_t bytes) {
    if (bytes >= (1u << 20) && bytes % (1u << 20) == 0)
        return fmt::format("{}M", bytes >> 20);
    return fmt::format("{}K", bytes >> 10);
}

std::uint64_t parse_size(const std::string& s) {
    std::uint64_t v = std::strtoull(s.c_str(), nullptr, 10);
    switch (s.empty() ? 0 : s.back()) {
    case 'K':
    case 'k':
        return v << 10;
    case 'M':
    case 'm':
        return v << 20;
    default:
        return v;
    }
}

} // namespace

int main(int argc, char** argv) {
    bench_case one;
    bool matrix = false, split = false;
    int loadgen_fd = -1;
    std::string json_path;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                fmt::print(stderr, "dmuser-microbench: {} needs a value\n", a);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--matrix")
            matrix = true;
        else if (a == "--op")
            one.write = next() == "write";
        else if (a == "--size")
            one.size = parse_size(next());
        else if (a == "--qd")
            one.qd = static_cast<unsigned>(std::stoul(next()));
        else if (a == "--threads")
            one.threads = static_cast<unsigned>(std::stoul(next()));
        else if (a == "--requests")
            one.requests = std::stoull(next());
        else if (a == "--seconds")
            one.seconds = std::stod(next());
        else if (a == "--json")
            json_path = next();
        else if (a == "--split")
            split = true;
        else if (a == "--loadgen")
            loadgen_fd = std::stoi(next());
        else {
            fmt::print(stderr,
                       "usage: dmuser-microbench [--matrix] [--op read|write] [--size N[K|M]] "
                       "[--qd N] [--threads N] [--requests N | --seconds S] [--json FILE]\n");
            return 2;
        }
    }
    dmuser::log::set_level(dmuser::log::level::warning);
    if (loadgen_fd >= 0)
        return load_generator(loadgen_fd, one);
    if (split) {
        if (!one.requests) {
            fmt::print(stderr, "dmuser-microbench: --split needs --requests N\n");
            return 2;
        }
        return run_split(one, argv[0]);
    }

    std::vector<bench_case> cases;
    if (matrix) {
        for (bool w : {false, true})
            for (std::uint64_t size : {4096ull, 65536ull, 1ull << 20})
                for (unsigned qd : {1u, 32u, 128u})
                    for (unsigned t : {1u, 2u})
                        cases.push_back({w, size, qd, t, 0, one.seconds});
    } else {
        cases.push_back(one);
    }

    std::string json = "{\"runs\": [";
    if (!one.requests)
        fmt::print("{:<5} {:>4} {:>4} {:>3} {:>12} {:>14} {:>15} {:>9} {:>7}\n", "op", "size", "QD",
                   "thr", "requests/s", "server ns/req", "loadgen ns/req", "MiB/s", "iou-wrk");
    int failed = 0;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const auto& c = cases[i];
        bench_result r = run_case(c);
        if (r.errors)
            ++failed;
        if (one.requests) {
            fmt::print("{} requests, {} errors\n", r.requests, r.errors);
            continue;
        }
        double rps = r.requests / r.seconds;
        double ns = r.requests ? r.server_cpu_ns / r.requests : 0;
        double lg = r.requests ? r.loadgen_cpu_ns / r.requests : 0;
        double mibs = rps * static_cast<double>(c.size) / (1 << 20);
        fmt::print("{:<5} {:>4} {:>4} {:>3} {:>12.0f} {:>14.0f} {:>15.0f} {:>9.0f} {:>7}{}\n",
                   c.write ? "write" : "read", human(c.size), c.qd, c.threads, rps, ns, lg, mibs,
                   r.iou_workers, r.errors ? fmt::format("  ({} errors!)", r.errors) : "");
        std::fflush(stdout);
        json += fmt::format("{}{{\"op\": \"{}\", \"size\": \"{}\", \"qd\": {}, \"threads\": {}, "
                            "\"rps\": {:.1f}, \"cpu_ns\": {:.1f}, \"loadgen_ns\": {:.1f}, "
                            "\"mibs\": {:.1f}, \"iou_wrk\": {}, \"errors\": {}}}",
                            i ? ", " : "", c.write ? "write" : "read", human(c.size), c.qd,
                            c.threads, rps, ns, lg, mibs, r.iou_workers, r.errors);
    }
    json += "]}\n";
    if (!json_path.empty()) {
        std::ofstream(json_path) << json;
    }
    return failed ? 1 : 0;
}
