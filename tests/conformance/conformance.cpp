// tests/conformance/conformance.cpp: the same scripted daemon against the module and
// against testing::fake_kernel, printing what it saw: each read(2) and write(2) on its
// channels with what they returned, the requests those bytes made up, and how each block
// I/O ended. The VM test (tests/vm/module-conformance.sh) runs it on both and compares the
// two transcripts; the host test compares the fake's with expected.txt, the module's
// transcript as committed.
//
//   dmuser-conformance --module   create a dm-user device per scenario (needs the module)
//   dmuser-conformance --fake     Part 2 stream channels; --fake-part1: Part 1's
//
// Sequence numbers are printed relative to the scenario's first request, and request
// flags not at all (the block layer sets them). A write the fake would fail is reported
// with the error the module returns: the fake records it in violations(), since a socket
// cannot fail the write itself.
#include "dmuser/device.hpp"
#include "dmuser/protocol.hpp"
#include "dmuser/testing/fake_kernel.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using namespace std::chrono_literals;
using bytes = std::vector<std::byte>;
constexpr std::uint64_t device_bytes = 1 << 20;
constexpr auto patience = 20s; // for a state that must come; far beyond any healthy wait

[[noreturn]] void die(const std::string& why) {
    std::fprintf(stderr, "dmuser-conformance: %s\n", why.c_str());
    std::exit(2);
}

bytes pattern(std::size_t n, unsigned seed) {
    bytes b(n);
    for (std::size_t i = 0; i < n; ++i)
        b[i] = static_cast<std::byte>((i * 131 + seed * 17 + i / 512) & 0xff);
    return b;
}

std::string errno_name(int err) {
    switch (err) {
    case EINVAL:
        return "EINVAL";
    case EIO:
        return "EIO";
    case EBUSY:
        return "EBUSY";
    case EOPNOTSUPP:
        return "EOPNOTSUPP";
    case ENOTBLK:
        return "ENOTBLK";
    case EAGAIN:
        return "EAGAIN";
    default:
        return fmt::format("errno {}", err);
    }
}

// One side of the test: the block layer that makes requests, and the channels.
class kernel_side {
public:
    virtual ~kernel_side() = default;
    virtual dmuser::unique_fd open_channel() = 0;
    // Each returns once the request waits for a daemon; the block I/O ends later.
    virtual void read(std::uint64_t off, std::uint64_t len) = 0;
    virtual void write(std::uint64_t off, bytes data) = 0;
    virtual void flush() = 0;
    // write(2) on a channel, as the daemon sees it: bytes taken or -errno.
    virtual ssize_t respond(int fd, const bytes& b) = 0;
    // Returns once the kernel has seen the daemon close channels: `open` are left.
    virtual void wait_closed(std::size_t /*open*/) {}
    // How every block I/O ended, in submission order.
    virtual std::vector<std::string> outcomes() = 0;
};

// The module: a dm-user device of 1 MiB, the block I/O from threads with O_DIRECT.
class module_side final : public kernel_side {
public:
    explicit module_side(const std::string& name) {
        dmuser::user_table t;
        t.name = name;
        t.sectors = device_bytes / 512;
        dev_.emplace(dmuser::device::create(t));
        block_.reset(::open(dev_->path().c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
        if (!block_)
            die("open " + dev_->path() + ": " + std::strerror(errno));
    }
    ~module_side() override {
        block_.reset();
        if (auto err = dev_->remove())
            std::fprintf(stderr, "dmuser-conformance: remove: %s\n", err.message().c_str());
    }
    dmuser::unique_fd open_channel() override {
        int fd = ::open(dev_->control_path().c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0)
            die("open " + dev_->control_path() + ": " + std::strerror(errno));
        return dmuser::unique_fd(fd);
    }
    void read(std::uint64_t off, std::uint64_t len) override {
        start([fd = block_.get(), off, len] {
            auto* buf = static_cast<std::byte*>(std::aligned_alloc(4096, len));
            ssize_t n = ::pread(fd, buf, len, static_cast<off_t>(off));
            int err = errno;
            bytes got(buf, buf + (n > 0 ? n : 0));
            std::free(buf);
            return std::pair{n < 0 ? -err : n, got};
        });
    }
    void write(std::uint64_t off, bytes data) override {
        start([fd = block_.get(), off, data = std::move(data)] {
            auto* buf = static_cast<std::byte*>(std::aligned_alloc(4096, data.size()));
            std::memcpy(buf, data.data(), data.size());
            ssize_t n = ::pwrite(fd, buf, data.size(), static_cast<off_t>(off));
            int err = errno;
            std::free(buf);
            return std::pair{n < 0 ? -err : n, bytes{}};
        });
    }
    void flush() override {
        start([fd = block_.get()] {
            int r = ::fsync(fd);
            return std::pair{r < 0 ? -static_cast<ssize_t>(errno) : 0, bytes{}};
        });
    }
    ssize_t respond(int fd, const bytes& b) override {
        ssize_t n = ::write(fd, b.data(), b.size());
        return n < 0 ? -errno : n;
    }
    std::vector<std::string> outcomes() override {
        std::vector<std::string> out;
        for (auto& f : ios_) {
            if (f.wait_for(patience) != std::future_status::ready)
                die("a block I/O never ended");
            auto [n, data] = f.get();
            out.push_back(n < 0 ? errno_name(static_cast<int>(-n)) : fmt::format("ok {}", n));
            if (!data.empty())
                out.back() += fmt::format(" data {:08x}", checksum(data));
        }
        ios_.clear();
        return out;
    }
    static std::uint32_t checksum(const bytes& b) {
        std::uint32_t h = 2166136261u;
        for (auto x : b)
            h = (h ^ static_cast<std::uint8_t>(x)) * 16777619u;
        return h;
    }

private:
    using io_result = std::pair<ssize_t, bytes>;
    // Starts an I/O and waits until the module has queued its request, so that requests
    // are queued in the order the script gives.
    void start(std::function<io_result()> io) {
        const std::uint64_t before = queued();
        ios_.push_back(std::async(std::launch::async, std::move(io)));
        const auto until = std::chrono::steady_clock::now() + patience;
        while (queued() <= before) {
            if (std::chrono::steady_clock::now() > until)
                die("a request never reached the target's queue");
            std::this_thread::sleep_for(1ms);
        }
    }
    std::uint64_t queued() const { return dev_->status().counter("queued").value_or(0); }

    std::optional<dmuser::device> dev_;
    dmuser::unique_fd block_;
    std::vector<std::future<io_result>> ios_;
};

class fake_side final : public kernel_side {
public:
    explicit fake_side(bool part2) : kernel_(options(part2)) {}
    dmuser::unique_fd open_channel() override { return kernel_.open_channel(); }
    void read(std::uint64_t off, std::uint64_t len) override {
        submit({DM_USER_REQ_MAP_READ, 0, off / 512, len, {}});
    }
    void write(std::uint64_t off, bytes data) override {
        const std::uint64_t len = data.size();
        submit({DM_USER_REQ_MAP_WRITE, 0, off / 512, len, std::move(data)});
    }
    void flush() override {
        submit({DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_PREFLUSH, 0, 0, {}});
    }
    ssize_t respond(int fd, const bytes& b) override {
        const std::size_t seen = kernel_.violations().size();
        ssize_t n = ::write(fd, b.data(), b.size());
        if (n < 0)
            return -errno;
        written_ += static_cast<std::uint64_t>(n);
        const auto until = std::chrono::steady_clock::now() + patience;
        while (kernel_.response_bytes() < written_) {
            if (std::chrono::steady_clock::now() > until)
                die("the fake never took a response");
            std::this_thread::sleep_for(1ms);
        }
        auto v = kernel_.violations();
        for (std::size_t i = seen; i < v.size(); ++i)
            if (v[i].find("(EINVAL") != std::string::npos)
                return -EINVAL;
        return n;
    }
    // The fake deals each request to a channel when it is submitted: it must know first.
    void wait_closed(std::size_t open) override {
        const auto until = std::chrono::steady_clock::now() + patience;
        while (kernel_.channels_open() > open) {
            if (std::chrono::steady_clock::now() > until)
                die("the fake never saw a channel closed");
            std::this_thread::sleep_for(1ms);
        }
    }
    std::vector<std::string> outcomes() override {
        std::vector<std::string> out;
        for (auto& [len, f] : ios_) {
            if (f.wait_for(patience) != std::future_status::ready)
                die("a block I/O never ended");
            auto r = f.get();
            if (r.result == DM_USER_RESP_SUCCESS)
                out.push_back(fmt::format("ok {}", len));
            else if (r.result == DM_USER_RESP_UNSUPPORTED)
                out.push_back("EOPNOTSUPP");
            else
                out.push_back("EIO"); // ERROR, or lost with its channel
            if (!r.data.empty())
                out.back() += fmt::format(" data {:08x}", module_side::checksum(r.data));
        }
        ios_.clear();
        return out;
    }

private:
    static dmuser::testing::fake_options options(bool part2) {
        dmuser::testing::fake_options o;
        o.part2 = part2;
        o.stream = true;
        o.device_bytes = device_bytes;
        return o;
    }
    void submit(dmuser::testing::fake_request r) {
        const std::uint64_t len =
            r.type == DM_USER_REQ_MAP_READ || r.type == DM_USER_REQ_MAP_WRITE ? r.len : 0;
        ios_.emplace_back(len, kernel_.submit(std::move(r)));
    }

    dmuser::testing::fake_kernel kernel_;
    std::uint64_t written_ = 0;
    std::vector<std::pair<std::uint64_t, std::future<dmuser::testing::fake_response>>> ios_;
};

// The daemon's side: raw reads and writes, each printed with what it returned, and the
// requests the bytes read make up.
class script {
public:
    script(kernel_side& k, std::string title) : k_(k) { say("== {}", title); }

    int open() {
        channels_.push_back({k_.open_channel(), {}, -1});
        return static_cast<int>(channels_.size() - 1);
    }
    void close(int ch) {
        channels_[ch].fd.reset();
        say("ch{} close", ch);
        k_.wait_closed(static_cast<std::size_t>(
            std::count_if(channels_.begin(), channels_.end(), [](auto& c) { return !!c.fd; })));
    }
    void nonblocking(int ch) {
        const int fd = channels_[ch].fd.get();
        ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    }

    // The block layer's side.
    void submit_write(std::uint64_t off, std::size_t len, unsigned seed) {
        bytes data = pattern(len, seed);
        written_[off / 512] = data;
        say("io{} write {} @ {}", ios_++, len, off);
        k_.write(off, std::move(data));
    }
    void submit_read(std::uint64_t off, std::size_t len) {
        say("io{} read {} @ {}", ios_++, len, off);
        k_.read(off, len);
    }
    void submit_flush() {
        say("io{} flush", ios_++);
        k_.flush();
    }

    // read(2) of n bytes on a channel.
    void read(int ch, std::size_t n) {
        auto& c = channels_[ch];
        bytes buf(n);
        ssize_t r = ::read(c.fd.get(), buf.data(), n);
        if (r < 0) {
            say("ch{} read({}) = {}", ch, n, errno_name(errno));
            return;
        }
        say("ch{} read({}) = {}", ch, n, r);
        c.partial.insert(c.partial.end(), buf.begin(), buf.begin() + r);
        take_request(ch);
    }

    // A response to the k-th request read in this scenario.
    bytes response(std::size_t k, std::uint64_t result) const {
        const auto& req = seen_.at(k);
        bytes b(dmuser::header_size);
        dmuser::request h = req;
        h.type = result;
        dmuser::encode_request(std::span<std::byte, dmuser::header_size>(b.data(), b.size()), h);
        if (req.type == DM_USER_REQ_MAP_READ && result == DM_USER_RESP_SUCCESS) {
            bytes data = pattern(req.len, 100 + static_cast<unsigned>(k));
            b.insert(b.end(), data.begin(), data.end());
        }
        return b;
    }
    bytes response_to_unknown_seq() const {
        bytes b(dmuser::header_size);
        dmuser::request h;
        h.seq = base_ + 1000;
        dmuser::encode_request(std::span<std::byte, dmuser::header_size>(b.data(), b.size()), h);
        return b;
    }
    // write(2) of these bytes on a channel.
    void respond(int ch, const bytes& b, std::string_view what) {
        // A response to the request this channel is still reading ends that request: the
        // module drops its unread rest.
        auto& c = channels_[ch];
        if (b.size() >= dmuser::header_size && c.reading >= 0 &&
            decode(b.data()).seq == seen_[c.reading].seq) {
            c.partial.clear();
            c.reading = -1;
        }
        ssize_t r = k_.respond(c.fd.get(), b);
        say("ch{} write({}) = {}  {}", ch, b.size(),
            r < 0 ? errno_name(static_cast<int>(-r)) : std::to_string(r), what);
    }

    // Every block I/O's end.
    void finish() {
        auto outcomes = k_.outcomes();
        for (std::size_t i = 0; i < outcomes.size(); ++i)
            say("io{} ends: {}", i, outcomes[i]);
    }

private:
    struct channel {
        dmuser::unique_fd fd;
        bytes partial; // of the request being read
        int reading;   // its index in seen_, once its header is in
    };
    template <typename... A>
    void say(fmt::format_string<A...> f, A&&... a) {
        // As it happens, so a run that hangs shows where.
        std::printf("%s\n", fmt::format(f, std::forward<A>(a)...).c_str());
        std::fflush(stdout);
    }
    static dmuser::request decode(const std::byte* p) {
        return dmuser::decode_header(
            std::span<const std::byte, dmuser::header_size>(p, dmuser::header_size));
    }
    void take_request(int ch) {
        auto& c = channels_[ch];
        if (c.reading < 0 && c.partial.size() >= dmuser::header_size) {
            dmuser::request h = decode(c.partial.data());
            if (seen_.empty())
                base_ = h.seq;
            seen_.push_back(h);
            c.reading = static_cast<int>(seen_.size() - 1);
            // The sector of an empty request (a flush) is the block layer's business.
            say("   request {}: {} seq+{} {}len {}", c.reading, dmuser::type_name(h.type),
                h.seq - base_, h.len ? fmt::format("sector {} ", h.sector) : "", h.len);
        }
        if (c.reading < 0)
            return;
        const auto& h = seen_[c.reading];
        const std::size_t whole = dmuser::header_size + (h.carries_payload() ? h.len : 0);
        if (c.partial.size() < whole)
            return;
        if (c.partial.size() > whole)
            say("   {} bytes past the request: two requests in one read", c.partial.size() - whole);
        if (h.carries_payload() && h.len) {
            auto it = written_.find(h.sector);
            bool same = it != written_.end() &&
                        std::equal(c.partial.begin() + dmuser::header_size,
                                   c.partial.begin() + static_cast<std::ptrdiff_t>(whole),
                                   it->second.begin(), it->second.end());
            say("   payload {}", same ? "as written" : "differs");
        }
        c.partial.clear();
        c.reading = -1;
    }

    kernel_side& k_;
    std::vector<channel> channels_;
    std::vector<dmuser::request> seen_;
    std::uint64_t base_ = 0;
    std::map<std::uint64_t, bytes> written_; // by sector
    unsigned ios_ = 0;
};

constexpr std::size_t big = (1 << 20) + dmuser::header_size;
constexpr auto success = DM_USER_RESP_SUCCESS;

// --- the scenarios ---------------------------------------------------------------------
void whole_messages(script& s) {
    int ch = s.open();
    s.submit_write(0, 4096, 1);
    s.submit_read(8192, 4096);
    s.read(ch, 0); // takes nothing
    s.read(ch, big);
    s.read(ch, big);
    s.respond(ch, s.response(0, success), "SUCCESS to 0");
    s.respond(ch, s.response(1, success), "SUCCESS to 1 with its data");
    s.nonblocking(ch);
    s.read(ch, big); // nothing queued
}

void reads_in_pieces(script& s) {
    int ch = s.open();
    s.submit_write(4096, 8192, 2);
    s.read(ch, 7);
    s.read(ch, 33);
    s.read(ch, 100);
    s.read(ch, 65536);
    s.respond(ch, s.response(0, success), "SUCCESS to 0");
}

void header_then_payload(script& s) {
    int ch = s.open();
    s.submit_write(0, 4096, 3);
    s.submit_read(0, 4096);
    s.read(ch, dmuser::header_size);
    s.read(ch, 4096);
    s.read(ch, dmuser::header_size);
    s.respond(ch, s.response(0, success), "SUCCESS to 0");
    // A response may come in pieces, across writes.
    bytes r = s.response(1, success);
    s.respond(ch, bytes(r.begin(), r.begin() + 10), "first 10 bytes of SUCCESS to 1");
    s.respond(ch, bytes(r.begin() + 10, r.begin() + 40), "the rest of its header");
    s.respond(ch, bytes(r.begin() + 40, r.end()), "its data");
}

void one_request_per_read(script& s) {
    int ch = s.open();
    s.submit_write(0, 4096, 4);
    s.submit_write(65536, 4096, 5);
    s.read(ch, big);
    s.read(ch, big);
    bytes both = s.response(0, success);
    bytes second = s.response(1, success);
    both.insert(both.end(), second.begin(), second.end());
    s.respond(ch, both, "SUCCESS to 0 and 1 in one write");
}

void answered_before_read_in_full(script& s) {
    int ch = s.open();
    s.submit_write(0, 8192, 6);
    s.submit_write(16384, 4096, 7);
    s.read(ch, dmuser::header_size);
    s.respond(ch, s.response(0, DM_USER_RESP_ERROR), "ERROR to 0, its payload unread");
    s.read(ch, big); // the next request, not the rest of the first
    s.respond(ch, s.response(1, success), "SUCCESS to 1");
}

void errors(script& s) {
    int a = s.open();
    s.submit_read(0, 4096);
    s.read(a, big);
    s.respond(a, s.response_to_unknown_seq(), "a seq never sent");
    int b = s.open();
    s.respond(b, s.response(0, success), "SUCCESS to 0 on the wrong channel");
    s.close(b); // (the fake would deal it the next request)
    s.respond(a, s.response(0, 7), "result 7 to 0");
    s.respond(a, s.response(0, success), "SUCCESS to 0 once more");
    s.submit_write(8192, 4096, 8);
    s.read(a, big);
    s.respond(a, s.response(1, DM_USER_RESP_UNSUPPORTED), "UNSUPPORTED to 1");
    s.submit_flush();
    s.read(a, big);
    s.respond(a, s.response(2, DM_USER_RESP_ERROR), "ERROR to 2");
}

void channel_closed_with_a_request(script& s) {
    int a = s.open();
    s.submit_read(0, 4096);
    s.read(a, big);
    s.close(a);
}

struct scenario {
    const char* name;
    void (*run)(script&);
};
constexpr scenario scenarios[] = {
    {"whole messages", whole_messages},
    {"reads in pieces", reads_in_pieces},
    {"header then payload, a response in pieces", header_then_payload},
    {"one request per read, two responses in one write", one_request_per_read},
    {"a request answered before it was read in full", answered_before_read_in_full},
    {"errors", errors},
    {"a channel closed with a request", channel_closed_with_a_request},
};

} // namespace

int main(int argc, char** argv) {
    const std::string mode = argc == 2 ? argv[1] : "";
    if (mode != "--module" && mode != "--fake" && mode != "--fake-part1")
        die("usage: dmuser-conformance --module | --fake | --fake-part1");
    try {
        unsigned i = 0;
        for (const auto& sc : scenarios) {
            std::unique_ptr<kernel_side> k;
            if (mode == "--module")
                k = std::make_unique<module_side>(
                    fmt::format("dmuser-conf-{}-{}", ::getpid(), i++));
            else
                k = std::make_unique<fake_side>(mode == "--fake");
            script s(*k, sc.name);
            sc.run(s);
            s.finish();
        }
    } catch (const std::exception& e) {
        die(e.what());
    }
    return 0;
}
