// dmuser/testing/fake_kernel.hpp: the kernel side of the dm-user protocol, in-process,
// over socketpairs, so a server (and a user's store) can be tested without the module.
//
// Part 2 behaviour: SOCK_SEQPACKET channels, so every read returns one whole request and
// every write is one response message (several back to back are accepted), and
// query() answers like DM_USER_IOC_GET_INFO. A request longer than the daemon's reads
// (channel_source::reads_of) goes in two datagrams, cut where the module would end the
// first read; the rest comes with the next read, as from the module, provided that read
// takes all of it (a datagram's excess is lost, where the module would keep it).
// Part 1 (Android's module): SOCK_STREAM channels read header then payload, query()
// reports ENOTTY.
//
// The fake checks the daemon: a response for a seq its channel does not hold, a READ
// answer of the wrong size, or trailing garbage is recorded in violations() (the module
// would fail that write with EINVAL). Faults to inject: raw bytes (malformed messages),
// requests sent in small pieces (short reads), delays, the target's removal (EOF). Part 2
// messages can also come in two reads (`split`), as the module gives a short buffer.
#pragma once

#include "dmuser/channel_source.hpp"
#include "dmuser/protocol.hpp"
#include "dmuser/unique_fd.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <poll.h>
#include <string>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

namespace dmuser::testing {

struct fake_options {
    bool part2 = true;
    std::uint64_t device_bytes = 64u << 20;
    std::uint64_t max_payload = 128u << 10;
    std::uint64_t features = DM_USER_FEATURE_POLL | DM_USER_FEATURE_WHOLE_MESSAGE |
                             DM_USER_FEATURE_MULTI_RESPONSE | DM_USER_FEATURE_REQUEUE;
    std::uint64_t ops =
        DM_USER_OP_FLUSH | DM_USER_OP_DISCARD | DM_USER_OP_WRITE_ZEROES | DM_USER_OP_SECURE_ERASE;
    // Part 1: send each request in pieces of this many bytes (0: whole), so the daemon
    // sees short reads.
    std::size_t piece = 0;
    // Part 2: a message longer than this many bytes goes as two datagrams, its first
    // `split` bytes then the rest, as the module answers a read of `split` bytes (the rest
    // comes with the channel's next read). 0: only where the daemon's reads are shorter
    // (channel_source::reads_of).
    std::size_t split = 0;
    // Sleep before sending each request (or piece).
    std::chrono::microseconds delay{0};
    // The first this many response writes fail with EBUSY, as the module's does when it
    // cannot take a response yet (channel_source::refuse_response).
    unsigned refuse_responses = 0;
};

// A request to send; payload is sent as is (it need not match len, to inject faults).
struct fake_request {
    std::uint64_t type = DM_USER_REQ_MAP_READ;
    std::uint64_t flags = 0;
    std::uint64_t sector = 0;
    std::uint64_t len = 0;
    std::vector<std::byte> payload;
};

struct fake_response {
    static constexpr std::uint64_t lost = ~0ull; // never answered (channel closed, target removed)
    std::uint64_t result = lost;
    std::vector<std::byte> data; // READ payload of a SUCCESS
};

class fake_kernel final : public channel_source {
public:
    using callback = std::function<void(fake_response)>;

    explicit fake_kernel(fake_options opts = {}) : opts_(opts) {
        wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!wake_)
            throw std::system_error(errno, std::system_category(), "eventfd");
        receiver_ = std::thread([this] { receive_loop(); });
    }
    fake_kernel(const fake_kernel&) = delete;
    fake_kernel& operator=(const fake_kernel&) = delete;
    ~fake_kernel() override {
        quit_ = true;
        poke();
        receiver_.join();
        // Anything still pending is lost: answer the waiters so none blocks forever.
        std::map<std::uint64_t, pending> left;
        {
            std::lock_guard lock(mutex_);
            left.swap(pending_);
        }
        for (auto& [seq, p] : left)
            p.done(fake_response{});
    }

    // --- channel_source ---------------------------------------------------------------
    unique_fd open_channel() override {
        int sv[2];
        if (::socketpair(AF_UNIX, (opts_.part2 ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_CLOEXEC, 0,
                         sv) != 0)
            throw std::system_error(errno, std::system_category(), "socketpair");
        grow_buffers(sv[0]);
        grow_buffers(sv[1]);
        auto ch = std::make_shared<chan>();
        ch->fd.reset(sv[0]);
        std::vector<fake_request> backlog;
        {
            std::lock_guard lock(mutex_);
            ch->index = channels_.size();
            channels_.push_back(ch);
            backlog.swap(backlog_);
        }
        poke();
        for (auto& r : backlog)
            dispatch_backlogged(std::move(r));
        return unique_fd(sv[1]);
    }
    module_info query(int) override {
        module_info m;
        if (!opts_.part2)
            return m; // ENOTTY
        m.extensions = true;
        m.info.version_major = DM_USER_VERSION_MAJOR;
        m.info.version_minor = DM_USER_VERSION_MINOR;
        m.info.version_patch = DM_USER_VERSION_PATCH;
        m.info.features = opts_.features;
        m.info.ops = opts_.ops;
        m.info.max_payload = opts_.max_payload;
        m.info.device_sectors = opts_.device_bytes / sector_size;
        return m;
    }
    std::error_code set_channel_flags(int, std::uint64_t flags) override {
        if (!opts_.part2)
            return std::make_error_code(std::errc::inappropriate_io_control_operation);
        channel_flags_ = flags;
        return {};
    }
    std::string describe() const override {
        return opts_.part2 ? "fake dm-user (Part 2)" : "fake dm-user (Part 1)";
    }
    void reads_of(std::size_t bytes) override { read_size_ = bytes; }
    std::error_code refuse_response(int) override {
        unsigned left = refusals_left_.load();
        while (left > 0)
            if (refusals_left_.compare_exchange_weak(left, left - 1)) {
                ++refused_;
                return std::make_error_code(std::errc::device_or_resource_busy);
            }
        return {};
    }

    // --- the block layer's side: thread-safe ------------------------------------------
    // Sends a request to the next channel (round robin; queued until one is open).
    // on_done runs on the fake's receiver thread; keep it short.
    void submit(fake_request r, callback on_done) {
        std::uint64_t seq = next_seq_.fetch_add(1);
        send_request(seq, std::move(r), std::move(on_done));
    }
    std::future<fake_response> submit(fake_request r) {
        auto promise = std::make_shared<std::promise<fake_response>>();
        auto fut = promise->get_future();
        submit(std::move(r),
               [promise](fake_response resp) { promise->set_value(std::move(resp)); });
        return fut;
    }
    fake_response call(fake_request r) { return submit(std::move(r)).get(); }

    fake_response read(std::uint64_t offset, std::uint64_t len, std::uint64_t flags = 0) {
        return call({DM_USER_REQ_MAP_READ, flags, offset / sector_size, len, {}});
    }
    fake_response write(std::uint64_t offset, std::span<const std::byte> data,
                        std::uint64_t flags = 0) {
        return call({DM_USER_REQ_MAP_WRITE, flags, offset / sector_size, data.size(),
                     std::vector<std::byte>(data.begin(), data.end())});
    }
    fake_response flush() {
        return call({DM_USER_REQ_MAP_WRITE, DM_USER_REQ_MAP_FLAG_PREFLUSH, 0, 0, {}});
    }
    fake_response op(std::uint64_t type, std::uint64_t offset, std::uint64_t len,
                     std::uint64_t flags = 0) {
        return call({type, flags, offset / sector_size, len, {}});
    }

    // Raw bytes to a channel, as one message (Part 2) or into the stream (Part 1).
    void inject(std::size_t channel_index, std::span<const std::byte> bytes) {
        auto ch = channel_at(channel_index);
        std::lock_guard lock(ch->send_mutex);
        send_all(*ch, bytes.data(), bytes.size(), false);
    }
    // Sends a header with a fresh seq plus `extra` raw bytes; the daemon's answer (if
    // any) is returned by the future.
    std::future<fake_response> inject_request(std::size_t channel_index, const request& header,
                                              std::span<const std::byte> extra) {
        auto promise = std::make_shared<std::promise<fake_response>>();
        auto fut = promise->get_future();
        std::uint64_t seq = next_seq_.fetch_add(1);
        auto ch = channel_at(channel_index);
        request h = header;
        h.seq = seq;
        {
            std::lock_guard lock(mutex_);
            pending_[seq] =
                pending{ch->index, h.type, h.len,
                        [promise](fake_response r) { promise->set_value(std::move(r)); }, nullptr};
        }
        std::vector<std::byte> msg(header_size);
        encode_request(std::span<std::byte, header_size>(msg.data(), header_size), h);
        msg.insert(msg.end(), extra.begin(), extra.end());
        std::lock_guard lock(ch->send_mutex);
        send_all(*ch, msg.data(), msg.size(), false);
        return fut;
    }

    // dmsetup remove: every channel reads end of file; pending requests are lost.
    void remove_target() {
        std::vector<std::shared_ptr<chan>> chans;
        {
            std::lock_guard lock(mutex_);
            chans = channels_;
        }
        for (auto& ch : chans)
            ::shutdown(ch->fd.get(), SHUT_RDWR);
    }

    std::vector<std::string> violations() const {
        std::lock_guard lock(mutex_);
        return violations_;
    }
    std::size_t pending_count() const {
        std::lock_guard lock(mutex_);
        return pending_.size();
    }
    std::size_t channels_opened() const {
        std::lock_guard lock(mutex_);
        return channels_.size();
    }
    std::uint64_t channel_flags() const { return channel_flags_; }
    std::uint64_t requeued() const { return requeued_; }
    // Response writes failed with EBUSY so far (fake_options::refuse_responses).
    unsigned refused() const { return refused_; }
    const fake_options& options() const { return opts_; }

private:
    struct chan {
        std::size_t index = 0;
        unique_fd fd;
        std::mutex send_mutex;     // keeps one request's bytes together
        std::vector<std::byte> in; // Part 1: response bytes not yet parsed
        bool closed = false;
    };
    struct pending {
        std::size_t channel = 0;
        std::uint64_t type = 0;
        std::uint64_t len = 0;
        callback done;
        std::shared_ptr<fake_request> req; // kept for DM_USER_CHANNEL_REQUEUE_ON_CLOSE
    };

    static void grow_buffers(int fd) {
        int bytes = 8 << 20;
        if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) != 0)
            ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
        if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0)
            ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
    }
    void poke() {
        std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(wake_.get(), &one, sizeof one);
    }
    std::shared_ptr<chan> channel_at(std::size_t i) {
        std::lock_guard lock(mutex_);
        if (i >= channels_.size())
            throw std::out_of_range("fake_kernel: no such channel");
        return channels_[i];
    }
    void violation(std::string what) {
        std::lock_guard lock(mutex_);
        violations_.push_back(std::move(what));
    }

    // Blocking send of a whole message (Part 2) or of stream bytes, optionally in pieces.
    void send_all(chan& ch, const std::byte* p, std::size_t n, bool pieces) {
        if (opts_.part2) {
            if (opts_.delay.count())
                std::this_thread::sleep_for(opts_.delay);
            std::size_t first = opts_.split && n > opts_.split ? opts_.split : n;
            if (const std::size_t r = read_size_; r && first > r)
                first = r; // the module's first read ends here; the rest comes with the next
            while (::send(ch.fd.get(), p, first, MSG_NOSIGNAL) < 0 && errno == EINTR) {
            }
            while (first < n && ::send(ch.fd.get(), p + first, n - first, MSG_NOSIGNAL) < 0 &&
                   errno == EINTR) {
            }
            return;
        }
        std::size_t step = pieces && opts_.piece ? opts_.piece : n;
        while (n > 0) {
            if (opts_.delay.count())
                std::this_thread::sleep_for(opts_.delay);
            ssize_t k = ::send(ch.fd.get(), p, std::min(step, n), MSG_NOSIGNAL);
            if (k < 0) {
                if (errno == EINTR)
                    continue;
                return; // the daemon closed the channel; the request stays pending
            }
            p += k;
            n -= static_cast<std::size_t>(k);
        }
    }

    void send_request(std::uint64_t seq, fake_request r, callback on_done) {
        std::shared_ptr<chan> ch;
        {
            std::lock_guard lock(mutex_);
            std::size_t open = 0;
            for (auto& c : channels_)
                open += !c->closed;
            if (open == 0) {
                backlog_seq_.push_back(seq);
                backlog_.push_back(std::move(r));
                backlog_done_.push_back(std::move(on_done));
                return;
            }
            do {
                ch = channels_[next_channel_++ % channels_.size()];
            } while (ch->closed);
            pending_[seq] = pending{ch->index, r.type, r.len, std::move(on_done),
                                    std::make_shared<fake_request>(r)};
        }
        std::vector<std::byte> msg(header_size + r.payload.size());
        request h{seq, r.type, r.flags, r.sector, r.len, {}};
        encode_request(std::span<std::byte, header_size>(msg.data(), header_size), h);
        if (!r.payload.empty())
            std::memcpy(msg.data() + header_size, r.payload.data(), r.payload.size());
        std::lock_guard lock(ch->send_mutex);
        send_all(*ch, msg.data(), msg.size(), true);
    }
    void dispatch_backlogged(fake_request r) {
        std::uint64_t seq;
        callback done;
        {
            std::lock_guard lock(mutex_);
            seq = backlog_seq_.front();
            backlog_seq_.pop_front();
            done = std::move(backlog_done_.front());
            backlog_done_.pop_front();
        }
        send_request(seq, std::move(r), std::move(done));
    }

    // Completes seq if `channel` holds it; returns the expected payload size, or -1.
    bool take_pending(std::size_t channel, std::uint64_t seq, pending& out) {
        std::lock_guard lock(mutex_);
        auto it = pending_.find(seq);
        if (it == pending_.end() || it->second.channel != channel) {
            violations_.push_back(fmt::format("channel {}: response for seq {} it does not hold "
                                              "(EINVAL)",
                                              channel, seq));
            return false;
        }
        out = std::move(it->second);
        pending_.erase(it);
        return true;
    }

    // Parses complete responses from buf; returns bytes consumed. `whole`: buf is one
    // message (Part 2), so a partial response in it is a violation.
    std::size_t parse(chan& ch, const std::byte* buf, std::size_t n, bool whole,
                      std::vector<std::pair<callback, fake_response>>& done) {
        std::size_t at = 0;
        while (n - at >= header_size) {
            request h =
                decode_header(std::span<const std::byte, header_size>(buf + at, header_size));
            std::uint64_t need = 0;
            {
                std::lock_guard lock(mutex_);
                auto it = pending_.find(h.seq);
                if (it != pending_.end() && it->second.type == DM_USER_REQ_MAP_READ &&
                    h.type == DM_USER_RESP_SUCCESS)
                    need = it->second.len;
            }
            if (n - at - header_size < need) {
                if (whole) {
                    violation(fmt::format("channel {}: READ response for seq {} carries {} of {} "
                                          "bytes",
                                          ch.index, h.seq, n - at - header_size, need));
                    return n;
                }
                break; // Part 1: wait for the rest
            }
            pending p;
            if (take_pending(ch.index, h.seq, p)) {
                fake_response r;
                r.result = h.type;
                if (h.type > DM_USER_RESP_UNSUPPORTED)
                    violation(fmt::format("channel {}: seq {} answered with result {}", ch.index,
                                          h.seq, h.type));
                r.data.assign(buf + at + header_size, buf + at + header_size + need);
                done.emplace_back(std::move(p.done), std::move(r));
            } else if (!whole) {
                return n; // the stream is out of step: drop what we have
            }
            at += header_size + need;
        }
        if (whole && at != n)
            violation(
                fmt::format("channel {}: {} stray bytes after the responses", ch.index, n - at));
        return whole ? n : at;
    }

    // Requests the channel held fail, or go to another channel when the daemon asked
    // for DM_USER_CHANNEL_REQUEUE_ON_CLOSE.
    void channel_closed(chan& ch, std::vector<std::pair<callback, fake_response>>& done) {
        std::vector<std::pair<std::uint64_t, pending>> again;
        {
            std::lock_guard lock(mutex_);
            ch.closed = true;
            bool requeue = channel_flags_ & DM_USER_CHANNEL_REQUEUE_ON_CLOSE;
            for (auto it = pending_.begin(); it != pending_.end();) {
                if (it->second.channel != ch.index) {
                    ++it;
                    continue;
                }
                if (requeue && it->second.req)
                    again.emplace_back(it->first, std::move(it->second));
                else
                    done.emplace_back(std::move(it->second.done), fake_response{});
                it = pending_.erase(it);
            }
        }
        for (auto& [seq, p] : again) {
            requeued_ += 1;
            send_request(seq, std::move(*p.req), std::move(p.done));
        }
    }

    void receive_loop() {
        std::vector<std::byte> buf(header_size + opts_.max_payload + (1u << 20));
        while (!quit_) {
            std::vector<std::shared_ptr<chan>> chans;
            {
                std::lock_guard lock(mutex_);
                for (auto& c : channels_)
                    if (!c->closed)
                        chans.push_back(c);
            }
            std::vector<pollfd> fds{{wake_.get(), POLLIN, 0}};
            for (auto& c : chans)
                fds.push_back({c->fd.get(), POLLIN, 0});
            if (::poll(fds.data(), fds.size(), 200) < 0 && errno != EINTR)
                break;
            if (fds[0].revents) {
                std::uint64_t v;
                [[maybe_unused]] auto n = ::read(wake_.get(), &v, sizeof v);
            }
            std::vector<std::pair<callback, fake_response>> done;
            for (std::size_t i = 1; i < fds.size(); ++i) {
                if (!fds[i].revents)
                    continue;
                chan& ch = *chans[i - 1];
                ssize_t k = ::recv(ch.fd.get(), buf.data(), buf.size(), MSG_DONTWAIT);
                if (k < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                if (k <= 0) {
                    channel_closed(ch, done);
                    continue;
                }
                if (opts_.part2) {
                    parse(ch, buf.data(), static_cast<std::size_t>(k), true, done);
                } else {
                    ch.in.insert(ch.in.end(), buf.data(), buf.data() + k);
                    std::size_t used = parse(ch, ch.in.data(), ch.in.size(), false, done);
                    ch.in.erase(ch.in.begin(), ch.in.begin() + static_cast<std::ptrdiff_t>(used));
                }
            }
            for (auto& [cb, resp] : done)
                if (cb)
                    cb(std::move(resp));
        }
    }

    fake_options opts_;
    unique_fd wake_;
    std::thread receiver_;
    std::atomic<bool> quit_{false};
    std::atomic<std::uint64_t> next_seq_{1};
    std::atomic<std::uint64_t> channel_flags_{0};
    std::atomic<std::uint64_t> requeued_{0};
    std::atomic<unsigned> refusals_left_{opts_.refuse_responses};
    std::atomic<unsigned> refused_{0};
    std::atomic<std::size_t> read_size_{0}; // of the daemon's reads (reads_of); 0: unknown

    mutable std::mutex mutex_;
    std::vector<std::shared_ptr<chan>> channels_;
    std::size_t next_channel_ = 0;
    std::map<std::uint64_t, pending> pending_;
    std::vector<fake_request> backlog_;
    std::deque<std::uint64_t> backlog_seq_;
    std::deque<callback> backlog_done_;
    std::vector<std::string> violations_;
};

} // namespace dmuser::testing
