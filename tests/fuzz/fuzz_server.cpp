// libFuzzer target: dmuser::server against a kernel side the input scripts.
//
// The input decides the module (Part 1, or Part 2 and its features and max_payload), the
// server's threads, channels and depth, the store (copying, or lending its pages), and
// then a script of kernel events: requests with any type, flags, range, seq and payload
// (matching its len or not), sent in pieces; short junk messages; an errno injected into
// the server's next read or write of a channel (through dmuser::testing's fault
// injector); end of file on a channel; a channel closed; draining the answers; stop().
//
// The kernel side behaves as the ABI lets the module behave, so that every failure is
// the server's: a stream always carries whole messages (a header, then exactly the
// payload its type and len call for), a message of a Part 2 whole-message channel comes
// in one read unless it is larger than the server's read buffer, and seqs are unique.
//
// Oracle, for every input:
//  - every response names a seq that was sent on that channel and is unanswered there
//    (so each is answered at most once, on the channel that read it);
//  - results are SUCCESS, ERROR or UNSUPPORTED; a request the ABI makes unservable
//    (unknown type, READ/WRITE over max_payload, range past the store, a whole message
//    whose payload is not what its header says) is not answered SUCCESS;
//  - a READ's SUCCESS carries exactly len bytes, equal to what the store holds, and a
//    WRITE's SUCCESS leaves its payload in the store (unless an overlapping request that
//    changes the store was in flight meanwhile);
//  - run() ends after stop() (bounded: a hang aborts, so libFuzzer reports it as a crash);
//  - no file descriptor leaks (/proc/self/fd is counted before and after).
// Every process-wide setting the input touches (log level, SIGPIPE, the fault injector) is
// saved and restored around it, so one input cannot change the next (or a later test).
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <dmuser/server.hpp>
#include <fuzzer/FuzzedDataProvider.h>
#include <map>
#include <mutex>
#include <optional>
#include <poll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using namespace std::chrono_literals;

[[noreturn]] void fail(const char* fmt_text, auto... args) {
    std::fprintf(stderr, "fuzz_server: ");
    std::fprintf(stderr, fmt_text, args...);
    std::fprintf(stderr, "\n");
    std::abort();
}
using ull = unsigned long long;

// FUZZ_SERVER_TRACE=1 prints the configuration and each event, to read a crash input.
const bool tracing = std::getenv("FUZZ_SERVER_TRACE") != nullptr;
void trace(const char* fmt_text, auto... args) {
    if (tracing) {
        std::fprintf(stderr, fmt_text, args...);
        std::fprintf(stderr, "\n");
    }
}

// --- stores ---------------------------------------------------------------------------
struct mem_store {
    std::vector<std::byte> mem;
    explicit mem_store(std::size_t bytes) : mem(bytes) {}
    std::uint64_t size() const { return mem.size(); }
    void read(std::uint64_t off, std::span<std::byte> out) {
        std::memcpy(out.data(), mem.data() + off, out.size());
    }
    void write(std::uint64_t off, std::span<const std::byte> in) {
        std::memcpy(mem.data() + off, in.data(), in.size());
    }
    void flush() {}
    void discard(std::uint64_t off, std::uint64_t len) { std::memset(mem.data() + off, 0, len); }
};
// Lends its pages for READs and WRITEs (the README's ramdisk), so the server's
// write_view path (split WRITEs on Part 2) runs too.
struct lending_store : mem_store {
    using mem_store::mem_store;
    std::span<const std::byte> read_view(std::uint64_t off, std::uint64_t len) const {
        return {mem.data() + off, len};
    }
    std::span<std::byte> write_view(std::uint64_t off, std::uint64_t len) {
        return {mem.data() + off, len};
    }
};

// --- process-wide state, saved and restored per input -----------------------------------
std::size_t count_fds() {
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (::readdir(d))
            ++n;
        ::closedir(d);
    }
    return n;
}

// Injections the script asked for: the next read (or write) the server submits on `fd`
// completes with -err.
struct injection {
    int fd;
    bool on_write;
    int err;
};
std::mutex injections_mutex;
std::vector<injection> injections;

int inject(const io_uring_sqe& op) noexcept {
    bool is_read = op.opcode == IORING_OP_READ || op.opcode == IORING_OP_READV;
    bool is_write = op.opcode == IORING_OP_WRITE || op.opcode == IORING_OP_WRITEV;
    if (!is_read && !is_write)
        return 0;
    std::lock_guard lock(injections_mutex);
    for (auto it = injections.begin(); it != injections.end(); ++it)
        if (it->fd == op.fd && it->on_write == is_write) {
            int err = it->err;
            injections.erase(it);
            return -err;
        }
    return 0;
}

struct saved_globals {
    dmuser::log::level level = dmuser::log::get_level();
    struct sigaction pipe_action {};
    dmuser::testing::fault_injector injector;
    saved_globals() {
        // Logging every rejected request would cost more than the rest of the input.
        dmuser::log::set_level(dmuser::log::level::off);
        // A write to a channel whose kernel end is closed raises SIGPIPE (the module's
        // would fail with an errno); the server must see EPIPE, not die.
        struct sigaction ignore {};
        ignore.sa_handler = SIG_IGN;
        ::sigaction(SIGPIPE, &ignore, &pipe_action);
        injector = dmuser::testing::set_fault_injector(&inject);
    }
    ~saved_globals() {
        dmuser::testing::set_fault_injector(injector);
        ::sigaction(SIGPIPE, &pipe_action, nullptr);
        dmuser::log::set_level(level);
        std::lock_guard lock(injections_mutex);
        injections.clear();
    }
};

// --- the scripted kernel --------------------------------------------------------------
struct config {
    bool part2 = false;
    std::uint64_t features = 0;
    std::uint64_t max_payload = 0; // what GET_INFO reports (Part 2)
    std::size_t store_bytes = 0;
    bool whole() const { return part2 && (features & DM_USER_FEATURE_WHOLE_MESSAGE); }
};

class scripted_kernel final : public dmuser::channel_source {
public:
    explicit scripted_kernel(const config& c) : cfg_(c) {}

    dmuser::unique_fd open_channel() override {
        int sv[2];
        int type = cfg_.whole() ? SOCK_SEQPACKET : SOCK_STREAM;
        if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0)
            throw std::system_error(errno, std::system_category(), "socketpair");
        chan c;
        c.kernel.reset(sv[0]);
        c.daemon_fd = sv[1];
        chans.push_back(std::move(c));
        return dmuser::unique_fd(sv[1]);
    }
    dmuser::module_info query(int) override {
        dmuser::module_info m;
        if (!cfg_.part2)
            return m; // ENOTTY: Android's module
        m.extensions = true;
        m.info.version_major = DM_USER_VERSION_MAJOR;
        m.info.version_minor = DM_USER_VERSION_MINOR;
        m.info.version_patch = DM_USER_VERSION_PATCH;
        m.info.features = cfg_.features;
        m.info.ops = DM_USER_OP_FLUSH | DM_USER_OP_DISCARD | DM_USER_OP_WRITE_ZEROES;
        m.info.max_payload = cfg_.max_payload;
        m.info.device_sectors = cfg_.store_bytes / dmuser::sector_size;
        return m;
    }
    std::error_code set_channel_flags(int, std::uint64_t) override {
        if (!cfg_.part2)
            return std::make_error_code(std::errc::inappropriate_io_control_operation);
        return {};
    }
    std::string describe() const override { return "scripted kernel"; }

    struct chan {
        dmuser::unique_fd kernel;  // our end; reset when the script closes the channel
        int daemon_fd = -1;        // the server's end, for injections
        bool eof = false;          // shut down for writing: nothing more is sent
        std::vector<std::byte> in; // stream: response bytes not parsed yet
    };
    std::vector<chan> chans; // only the fuzz thread touches it after run() opened them

private:
    config cfg_;
};

// A request in flight, as the kernel side knows it.
struct sent {
    std::size_t channel;
    std::uint64_t type;
    std::uint64_t len;
    std::uint64_t begin, end; // byte range, saturated
    bool servable;            // the ABI lets a daemon answer SUCCESS
    bool changes_store;
    bool tainted = false;           // an overlapping request that changes the store was in flight
    std::vector<std::byte> payload; // a WRITE's, when it matches len
};

template <typename Store>
class harness {
public:
    harness(FuzzedDataProvider& in, const config& cfg, dmuser::server_options opts)
        : in_(in), cfg_(cfg), store_(cfg.store_bytes), kernel_(cfg),
          srv_(store_, kernel_, std::move(opts)) {}

    void run() {
        std::atomic<bool> done{false};
        std::thread runner([&] {
            try {
                srv_.run();
            } catch (const std::exception&) {
                // Refused configuration (e.g. max_payload 0): nothing ran.
            }
            done = true;
        });
        // Wait for the server to come up (or to refuse); bounded so a hang is a crash.
        wait_until([&] { return srv_.ready() || done; }, "the server to start");
        if (srv_.ready()) {
            max_payload_ = srv_.max_payload();
            whole_read_ = cfg_.whole() ? read_capacity() : 0;
            script();
        }
        trace("%s", "stop");
        srv_.stop();
        // Collect answers until run() ends: it answers what it read, then returns.
        wait_until(
            [&] {
                drain(1);
                return done.load();
            },
            "run() to end after stop()");
        runner.join();
        drain(0);
    }

private:
    static constexpr auto bound = 20s; // far above any honest input (< 10 ms)

    template <typename Pred>
    void wait_until(Pred pred, const char* what) {
        auto deadline = std::chrono::steady_clock::now() + bound;
        while (!pred()) {
            if (std::chrono::steady_clock::now() > deadline)
                fail("hang: waited %lld s for %s", static_cast<long long>(bound.count()), what);
            std::this_thread::sleep_for(50us);
        }
    }

    // The payload bytes a Part 2 whole-message read takes (see server::run).
    std::size_t read_capacity() const { return read_size_; }

    void script() {
        while (in_.remaining_bytes() > 0) {
            switch (in_.ConsumeIntegralInRange<int>(0, 9)) {
            case 0:
            case 1:
            case 2:
            case 3:
                send_request();
                break;
            case 4:
                send_junk();
                break;
            case 5:
                inject_errno();
                break;
            case 6:
                end_channel(false);
                break;
            case 7:
                if (in_.ConsumeBool())
                    end_channel(true);
                break;
            case 8:
                drain(in_.ConsumeIntegralInRange<int>(0, 2));
                break;
            case 9:
                if (in_.ConsumeIntegralInRange<int>(0, 7) == 0)
                    return; // stop now
                break;
            }
        }
    }

    scripted_kernel::chan* pick_open_channel() {
        auto& chans = kernel_.chans;
        auto& c = chans[in_.ConsumeIntegralInRange<std::size_t>(0, chans.size() - 1)];
        return c.kernel && !c.eof ? &c : nullptr;
    }
    std::size_t index_of(const scripted_kernel::chan& c) const {
        return static_cast<std::size_t>(&c - kernel_.chans.data());
    }

    // Unique per target, as the ABI says; gaps and large values are fine. Empty once the
    // seqs ran out (they never wrap around to one already used).
    std::optional<std::uint64_t> next_seq() {
        std::uint64_t step = 1;
        switch (in_.ConsumeIntegralInRange<int>(0, 3)) {
        case 0:
            step = in_.ConsumeIntegralInRange<std::uint64_t>(2, 1000);
            break;
        case 1:
            step = in_.ConsumeIntegral<std::uint64_t>();
            break;
        default:
            break;
        }
        if (seq_ == ~0ull)
            return std::nullopt;
        step = std::max<std::uint64_t>(1, std::min<std::uint64_t>(step, ~0ull - seq_));
        seq_ += step;
        return seq_;
    }

    std::uint64_t pick_len() {
        switch (in_.ConsumeIntegralInRange<int>(0, 5)) {
        case 0:
            return 0;
        case 1:
            return 512 * in_.ConsumeIntegralInRange<std::uint64_t>(1, 16);
        case 2:
            return in_.ConsumeIntegralInRange<std::uint64_t>(1, 9000);
        case 3:
            return max_payload_ + in_.ConsumeIntegralInRange<std::uint64_t>(0, 1) * 512;
        case 4:
            return in_.ConsumeIntegral<std::uint64_t>(); // never sent as payload (capped)
        default:
            return 4096;
        }
    }

    void send_request() {
        scripted_kernel::chan* c = pick_open_channel();
        std::uint64_t type = in_.ConsumeBool() ? in_.ConsumeIntegralInRange<std::uint64_t>(0, 2)
                                               : in_.ConsumeIntegralInRange<std::uint64_t>(0, 20);
        if (in_.ConsumeIntegralInRange<int>(0, 15) == 0)
            type = in_.ConsumeIntegral<std::uint64_t>();
        std::uint64_t flags = in_.ConsumeBool() ? 0 : in_.ConsumeIntegral<std::uint64_t>();
        std::uint64_t sectors = cfg_.store_bytes / 512;
        std::uint64_t sector = in_.ConsumeBool()
                                   ? in_.ConsumeIntegralInRange<std::uint64_t>(0, sectors + 2)
                                   : in_.ConsumeIntegral<std::uint64_t>();
        std::uint64_t len = pick_len();
        // The payload: exactly len for a WRITE, or (whole messages only: a stream must
        // stay in step) a wrong size.
        std::size_t payload_bytes = type == DM_USER_REQ_MAP_WRITE ? len : 0;
        if (cfg_.whole() && in_.ConsumeIntegralInRange<int>(0, 5) == 0)
            payload_bytes = in_.ConsumeIntegralInRange<std::size_t>(0, 9000);
        int pieces = in_.ConsumeIntegralInRange<int>(1, 3);
        std::size_t cut1 = in_.ConsumeIntegral<std::uint16_t>();
        std::size_t cut2 = in_.ConsumeIntegral<std::uint16_t>();
        if (!c)
            return;
        if (payload_bytes > payload_cap || bytes_sent_ + payload_bytes > total_cap ||
            messages_ >= message_cap)
            return; // keeps each input cheap, and every send within the socket buffer
        std::optional<std::uint64_t> next = next_seq();
        if (!next)
            return;
        std::uint64_t seq = *next;

        std::vector<std::byte> msg(dmuser::header_size + payload_bytes);
        dmuser::request h{seq, type, flags, sector, len, {}};
        dmuser::encode_request(std::span<std::byte, dmuser::header_size>(msg.data(), 40), h);
        for (std::size_t i = 0; i < payload_bytes; ++i)
            msg[40 + i] = static_cast<std::byte>((seq * 131 + i * 7) >> 3);

        sent s;
        s.channel = index_of(*c);
        s.type = type;
        s.len = len;
        unsigned __int128 b = static_cast<unsigned __int128>(sector) * 512;
        unsigned __int128 e = b + len;
        s.begin = b > ~0ull ? ~0ull : static_cast<std::uint64_t>(b);
        s.end = e > ~0ull ? ~0ull : static_cast<std::uint64_t>(e);
        bool sized = type == DM_USER_REQ_MAP_READ || type == DM_USER_REQ_MAP_WRITE;
        bool well_framed = payload_bytes == (type == DM_USER_REQ_MAP_WRITE ? len : 0);
        s.servable = type <= DM_USER_REQ_MAP_ZONE_RESET_ALL && !(sized && len > max_payload_) &&
                     e <= cfg_.store_bytes && well_framed;
        s.changes_store = type != DM_USER_REQ_MAP_READ && type != DM_USER_REQ_MAP_FLUSH && len > 0;
        if (type == DM_USER_REQ_MAP_WRITE && well_framed)
            s.payload.assign(msg.begin() + 40, msg.end());

        std::vector<std::size_t> cuts;
        if (cfg_.whole()) {
            // The module splits a message only when the read's buffer is too small: the
            // rest comes with the channel's next read. A datagram would drop the rest
            // instead, so a larger message is sent only when it is a WRITE the module
            // could send (whole, within max_payload), split where the module splits it.
            if (msg.size() > 40 + whole_read_) {
                if (!(server_splits_writes_ && type == DM_USER_REQ_MAP_WRITE && well_framed &&
                      len <= max_payload_))
                    return;
                cuts.push_back(40 + whole_read_);
            }
        } else {
            if (pieces >= 2 && msg.size() > 1)
                cuts.push_back(1 + cut1 % (msg.size() - 1));
            if (pieces >= 3 && msg.size() > 1)
                cuts.push_back(1 + cut2 % (msg.size() - 1));
            std::sort(cuts.begin(), cuts.end());
            cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
        }
        if (!send_pieces(*c, msg, cuts))
            return;
        // Overlaps with what changes the store make both unverifiable.
        for (auto& [other_seq, o] : in_flight_)
            if (o.begin < s.end && s.begin < o.end && (o.changes_store || s.changes_store)) {
                o.tainted = true;
                s.tainted = true;
            }
        trace("send ch %zu seq %llu type %llu len %llu sector %llu payload %zu pieces %zu",
              s.channel, static_cast<ull>(seq), static_cast<ull>(type), static_cast<ull>(len),
              static_cast<ull>(sector), payload_bytes, cuts.size() + 1);
        in_flight_.emplace(seq, std::move(s));
        ++messages_;
        bytes_sent_ += msg.size();
    }

    bool send_pieces(scripted_kernel::chan& c, const std::vector<std::byte>& msg,
                     const std::vector<std::size_t>& cuts) {
        std::size_t at = 0;
        for (std::size_t i = 0; i <= cuts.size(); ++i) {
            std::size_t to = i < cuts.size() ? cuts[i] : msg.size();
            while (at < to) {
                ssize_t k =
                    ::send(c.kernel.get(), msg.data() + at, to - at, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k < 0 && errno == EINTR)
                    continue;
                if (k < 0 && errno != EAGAIN) {
                    // The server's end is closed (run() ended): nothing more can be sent,
                    // and nothing of this message will be answered.
                    c.eof = true;
                    return false;
                }
                if (k < 0 && at == 0)
                    return false; // no room: as if never sent
                if (k < 0)
                    fail("send on channel %zu: no room after %zu of %zu bytes (the caps are "
                         "too high for the socket buffer)",
                         index_of(c), at, msg.size());
                at += static_cast<std::size_t>(k);
                if (cfg_.whole())
                    at = to; // a datagram goes whole or not at all
            }
        }
        return true;
    }

    // Whole messages only: a message shorter than a header (nothing to answer).
    void send_junk() {
        scripted_kernel::chan* c = pick_open_channel();
        auto junk = in_.ConsumeBytes<std::byte>(in_.ConsumeIntegralInRange<std::size_t>(1, 39));
        if (!c || !cfg_.whole() || junk.empty())
            return;
        (void)::send(c->kernel.get(), junk.data(), junk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }

    void inject_errno() {
        static constexpr int errs[] = {EINTR, EAGAIN, EIO, ENOTBLK, EINVAL, EFAULT, ENOMEM};
        auto& chans = kernel_.chans;
        auto& c = chans[in_.ConsumeIntegralInRange<std::size_t>(0, chans.size() - 1)];
        bool on_write = in_.ConsumeBool();
        int err = errs[in_.ConsumeIntegralInRange<std::size_t>(0, std::size(errs) - 1)];
        trace("inject %s on ch %zu: %s", on_write ? "write" : "read", index_of(c),
              std::strerror(err));
        std::lock_guard lock(injections_mutex);
        injections.push_back({c.daemon_fd, on_write, err});
    }

    // End of file on a channel (the target's removal), or the channel closed outright.
    void end_channel(bool close) {
        auto& chans = kernel_.chans;
        auto& c = chans[in_.ConsumeIntegralInRange<std::size_t>(0, chans.size() - 1)];
        if (!c.kernel)
            return;
        trace("%s ch %zu", close ? "close" : "eof", index_of(c));
        if (close) {
            c.kernel.reset(); // what it held is never answered
        } else if (!c.eof) {
            ::shutdown(c.kernel.get(), SHUT_WR);
        }
        c.eof = true;
    }

    // Reads whatever answers are there; waits up to `wait_ms` for the first.
    void drain(int wait_ms) {
        std::vector<pollfd> fds;
        std::vector<std::size_t> which;
        for (std::size_t i = 0; i < kernel_.chans.size(); ++i)
            if (kernel_.chans[i].kernel) {
                fds.push_back({kernel_.chans[i].kernel.get(), POLLIN, 0});
                which.push_back(i);
            }
        if (fds.empty() || ::poll(fds.data(), fds.size(), wait_ms) <= 0)
            return;
        for (std::size_t i = 0; i < fds.size(); ++i)
            if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
                receive(kernel_.chans[which[i]]);
    }

    void receive(scripted_kernel::chan& c) {
        std::vector<std::byte> buf(40 + std::max<std::uint64_t>(max_payload_, 1) + 65536);
        for (;;) {
            ssize_t k = ::recv(c.kernel.get(), buf.data(), buf.size(), MSG_DONTWAIT);
            if (k <= 0)
                return; // nothing more now, or the server closed it (run() ended)
            if (cfg_.whole()) {
                std::size_t at = parse(c, buf.data(), static_cast<std::size_t>(k), true);
                if (at != static_cast<std::size_t>(k))
                    fail("channel %zu: a write of %zd bytes is not whole responses (%zu used)",
                         index_of(c), k, at);
            } else {
                c.in.insert(c.in.end(), buf.data(), buf.data() + k);
                std::size_t used = parse(c, c.in.data(), c.in.size(), false);
                c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(used));
            }
        }
    }

    // Checks the responses in buf; returns the bytes they take.
    std::size_t parse(scripted_kernel::chan& c, const std::byte* buf, std::size_t n, bool whole) {
        std::size_t at = 0;
        const std::size_t ch = index_of(c);
        while (n - at >= 40) {
            dmuser::request r = dmuser::decode_header(std::span<const std::byte, 40>(buf + at, 40));
            auto it = in_flight_.find(r.seq);
            if (it == in_flight_.end() || it->second.channel != ch)
                fail("channel %zu: response for seq %llu, which it does not hold (result %llu)", ch,
                     static_cast<ull>(r.seq), static_cast<ull>(r.type));
            sent& s = it->second;
            if (r.type > DM_USER_RESP_UNSUPPORTED)
                fail("seq %llu: result %llu is none of SUCCESS, ERROR, UNSUPPORTED",
                     static_cast<ull>(r.seq), static_cast<ull>(r.type));
            bool success = r.type == DM_USER_RESP_SUCCESS;
            if (success && !s.servable)
                fail("seq %llu: type %llu len %llu range [%llu, %llu) answered SUCCESS, but the "
                     "ABI makes it unservable (max_payload %llu, store %zu B)",
                     static_cast<ull>(r.seq), static_cast<ull>(s.type), static_cast<ull>(s.len),
                     static_cast<ull>(s.begin), static_cast<ull>(s.end),
                     static_cast<ull>(max_payload_), cfg_.store_bytes);
            std::size_t data = success && s.type == DM_USER_REQ_MAP_READ ? s.len : 0;
            if (n - at - 40 < data) {
                if (whole)
                    fail("seq %llu: READ answer carries %zu of %zu bytes", static_cast<ull>(r.seq),
                         n - at - 40, data);
                break; // stream: the rest comes later
            }
            const std::byte* got = buf + at + 40;
            if (success && !s.tainted) {
                if (s.type == DM_USER_REQ_MAP_READ &&
                    std::memcmp(got, store_.mem.data() + s.begin, data) != 0)
                    fail("seq %llu: READ of [%llu, %llu) differs from the store",
                         static_cast<ull>(r.seq), static_cast<ull>(s.begin),
                         static_cast<ull>(s.end));
                if (s.type == DM_USER_REQ_MAP_WRITE && !s.payload.empty() &&
                    std::memcmp(s.payload.data(), store_.mem.data() + s.begin, s.len) != 0)
                    fail("seq %llu: WRITE of [%llu, %llu) answered SUCCESS, the store differs",
                         static_cast<ull>(r.seq), static_cast<ull>(s.begin),
                         static_cast<ull>(s.end));
            }
            in_flight_.erase(it);
            at += 40 + data;
        }
        if (whole && at != n)
            fail("channel %zu: %zu stray bytes after the responses", ch, n - at);
        return at;
    }

public:
    std::size_t read_size_ = 0;         // set by the caller from the options
    bool server_splits_writes_ = false; // ditto

private:
    static constexpr std::size_t payload_cap = 20000;
    static constexpr std::size_t total_cap = 96u << 10;
    static constexpr unsigned message_cap = 48;

    FuzzedDataProvider& in_;
    config cfg_;
    Store store_;
    scripted_kernel kernel_;
    dmuser::server<Store> srv_;
    std::uint64_t max_payload_ = 0;
    std::size_t whole_read_ = 0;
    std::uint64_t seq_ = 0;
    std::map<std::uint64_t, sent> in_flight_;
    std::size_t bytes_sent_ = 0;
    unsigned messages_ = 0;
};

template <typename Store>
void run_input(FuzzedDataProvider& in, const config& cfg, dmuser::server_options opts) {
    // What server::run() will ask of each whole-message read (kept in step with it).
    std::uint64_t mp = cfg.part2 ? cfg.max_payload : opts.part1_max_payload;
    bool splits = dmuser::has_write_view<Store> && cfg.whole() && opts.write_view_above > 0 &&
                  opts.write_view_above < mp;
    trace("part2 %d features %#llx max_payload %llu store %zu threads %u channels %u depth %u "
          "part1_max %llu write_view_above %zu lending %d splits %d",
          cfg.part2, static_cast<ull>(cfg.features), static_cast<ull>(cfg.max_payload),
          cfg.store_bytes, opts.threads, opts.channels, opts.depth,
          static_cast<ull>(opts.part1_max_payload), opts.write_view_above,
          dmuser::has_write_view<Store>, splits);
    harness<Store> h(in, cfg, opts);
    h.read_size_ = splits ? opts.write_view_above : mp;
    h.server_splits_writes_ = splits;
    h.run();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::size_t fds_before = count_fds();
    {
        saved_globals saved;
        FuzzedDataProvider in(data, size);
        config cfg;
        cfg.part2 = in.ConsumeBool();
        cfg.features = in.ConsumeIntegralInRange<std::uint64_t>(0, 15); // POLL..REQUEUE
        static constexpr std::uint64_t payloads[] = {512, 4096, 8192, 65536};
        cfg.max_payload = in.ConsumeIntegralInRange<int>(0, 15) == 0
                              ? (in.ConsumeBool() ? 0 : std::uint64_t{1} << 30) // refused
                          : in.ConsumeBool()
                              ? payloads[in.ConsumeIntegralInRange<std::size_t>(0, 3)]
                              : in.ConsumeIntegralInRange<std::uint64_t>(1, 65536);
        cfg.store_bytes = 512 * in.ConsumeIntegralInRange<std::size_t>(1, 256);
        dmuser::server_options opts;
        opts.threads = in.ConsumeIntegralInRange<unsigned>(1, 2);
        opts.channels = in.ConsumeIntegralInRange<unsigned>(1, 3);
        opts.depth = in.ConsumeIntegralInRange<unsigned>(1, 4);
        opts.ring_entries = 32;
        opts.part1_max_payload = in.ConsumeIntegralInRange<std::uint64_t>(512, 65536);
        opts.write_view_above =
            in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<std::size_t>(1, 16384);
        opts.requeue_on_close = in.ConsumeBool();
        opts.io_flusher = false;     // a process-wide prctl
        opts.handle_signals = false; // the signal mask is process-wide too
        if (in.ConsumeBool())
            run_input<lending_store>(in, cfg, opts);
        else
            run_input<mem_store>(in, cfg, opts);
    }
    const std::size_t fds_after = count_fds();
    if (fds_after != fds_before)
        fail("%zu file descriptors before the input, %zu after", fds_before, fds_after);
    return 0;
}
