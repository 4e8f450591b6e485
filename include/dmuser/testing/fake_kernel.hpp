// dmuser/testing/fake_kernel.hpp: the kernel side of the dm-user protocol, in-process,
// over socketpairs, so a server (and a user's store) can be tested without the module.
//
// Reads. A stream channel (Part 1 always; Part 2 with fake_options::stream) is a byte
// stream that holds one request at a time: the next is offered once the daemon has read
// all of the last, and a read that takes a request's end stops there (see send_stream).
// So a read of any size gets what the module's would, the request's next bytes and never
// bytes of two requests, the rest coming with the next read (checked against the module
// by tests/conformance). One difference remains: a request of more than 32 KiB may show
// to a read that races its sending in pieces, where the module's would have had it all.
// A Part 2 datagram channel (the default: it keeps every request whole however large, and
// queues many at once, as the module does) sends each request as one datagram, cut where the
// daemon's reads end when it declared their size (channel_source::reads_of; the server does),
// since a datagram's excess would be lost. query() answers like DM_USER_IOC_GET_INFO; Part 1
// reports ENOTTY.
//
// Writes. Responses are parsed as the module parses a channel's writes: one or more back to
// back, any of them in pieces across writes. What the module would refuse with an error is
// recorded in violations() with that error (a socket cannot fail the write itself): a
// response for a seq its channel does not hold (EINVAL), a result other than SUCCESS, ERROR
// or UNSUPPORTED (EINVAL; the request fails, as there). A response to a request not yet
// read in full drops its unread rest, as the module does.
//
// What a socket cannot show: the target's removal is end of file (the module's reads fail
// with ENOTBLK; the server takes both for it), and requests are dealt to channels round
// robin when submitted (the module gives each to the channel that reads next).
//
// Faults to inject, beyond anything the module does: raw bytes (malformed messages),
// requests sent in small pieces, delays, response writes refused with EBUSY.
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
#include <fcntl.h>
#include <fmt/format.h>
#include <functional>
#include <future>
#include <linux/sockios.h>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

namespace dmuser::testing {

struct fake_options {
    bool part2 = true;
    // Part 2: a stream channel (see the top of this file) instead of datagrams.
    bool stream = false;
    std::uint64_t device_bytes = 64u << 20;
    std::uint64_t max_payload = 128u << 10;
    std::uint64_t features = DM_USER_FEATURE_POLL | DM_USER_FEATURE_WHOLE_MESSAGE |
                             DM_USER_FEATURE_MULTI_RESPONSE | DM_USER_FEATURE_REQUEUE;
    std::uint64_t ops =
        DM_USER_OP_FLUSH | DM_USER_OP_DISCARD | DM_USER_OP_WRITE_ZEROES | DM_USER_OP_SECURE_ERASE;
    // Stream channels: send each request in pieces of this many bytes (0: whole), so the
    // daemon sees reads shorter than it asked for (the module never does this).
    std::size_t piece = 0;
    // Part 2 datagrams: a message longer than this many bytes goes as two datagrams, its first
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
        epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
        if (!wake_ || !epoll_)
            throw std::system_error(errno, std::system_category(), "eventfd/epoll");
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = wake_token;
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) != 0)
            throw std::system_error(errno, std::system_category(), "epoll_ctl");
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
        if (::socketpair(AF_UNIX, (streams() ? SOCK_STREAM : SOCK_SEQPACKET) | SOCK_CLOEXEC, 0,
                         sv) != 0)
            throw std::system_error(errno, std::system_category(), "socketpair");
        unique_fd mine(sv[0]), theirs(sv[1]);
        grow_buffers(sv[0]);
        grow_buffers(sv[1]);
        auto ch = std::make_shared<chan>();
        ch->fd = std::move(mine);
        struct stat st {};
        if (::fstat(theirs.get(), &st) != 0)
            throw std::system_error(errno, std::system_category(), "fstat");
        ch->peer_fd = theirs.get();
        ch->peer_ino = st.st_ino;
        std::vector<fake_request> backlog;
        {
            std::lock_guard lock(mutex_);
            ch->index = channels_.size();
            channels_.push_back(ch);
            backlog.swap(backlog_);
        }
        // Edge-triggered: a stream channel's EPOLLOUT comes each time the daemon has read
        // some of what was sent, which is when the next request may be offered.
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (streams() ? EPOLLOUT : 0u);
        ev.data.u64 = ch->index;
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, ch->fd.get(), &ev) != 0)
            throw std::system_error(errno, std::system_category(), "epoll_ctl");
        for (auto& r : backlog)
            dispatch_backlogged(std::move(r));
        return theirs;
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

    // Raw bytes to a channel, as one message (datagrams) or into the stream.
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
        std::vector<std::byte> msg(header_size);
        encode_request(std::span<std::byte, header_size>(msg.data(), header_size), h);
        msg.insert(msg.end(), extra.begin(), extra.end());
        {
            std::lock_guard lock(mutex_);
            pending_[seq] =
                pending{ch->index, h.type, h.len,
                        [promise](fake_response r) { promise->set_value(std::move(r)); }, nullptr};
            if (streams())
                ch->outbox.push_back(outgoing{seq, std::move(msg)});
        }
        if (streams()) {
            offer(*ch);
        } else {
            std::lock_guard lock(ch->send_mutex);
            send_all(*ch, msg.data(), msg.size(), false);
        }
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
    // Channels the daemon has not closed (as far as the fake has seen).
    std::size_t channels_open() const {
        std::lock_guard lock(mutex_);
        std::size_t open = 0;
        for (auto& c : channels_)
            open += !c->closed;
        return open;
    }
    // Each channel's state, for a test that failed to say where things stand.
    std::string describe_state() const {
        std::lock_guard lock(mutex_);
        std::string out = fmt::format("{} pending", pending_.size());
        int shown = 0;
        for (auto& [seq, p] : pending_)
            if (shown++ < 8)
                out += fmt::format(" (seq {} on ch{})", seq, p.channel);
        out += fmt::format("; {} violations;", violations_.size());
        for (auto& c : channels_)
            out += fmt::format(" ch{}: {}{} offered seq {}, {} unread, {} queued;", c->index,
                               c->closed ? "closed, " : "",
                               c->offering ? (c->sending ? "sending" : "offering") : "idle",
                               c->offered_seq, unread(*c), c->outbox.size());
        return out;
    }
    std::uint64_t channel_flags() const { return channel_flags_; }
    std::uint64_t requeued() const { return requeued_; }
    // Bytes of responses taken from every channel so far (violations() is up to date
    // with them).
    std::uint64_t response_bytes() const { return response_bytes_; }
    // Response writes failed with EBUSY so far (fake_options::refuse_responses).
    unsigned refused() const { return refused_; }
    const fake_options& options() const { return opts_; }

private:
    static constexpr std::uint64_t wake_token = ~0ull;

    struct outgoing {
        std::uint64_t seq = 0;
        std::vector<std::byte> bytes;
    };
    struct chan {
        std::size_t index = 0;
        unique_fd fd; // the fake's end
        // The daemon's end, to drop a request's unread rest: its number and inode, not a
        // copy, which would keep the channel open after the daemon closed it.
        int peer_fd = -1;
        ino_t peer_ino = 0;
        std::mutex send_mutex;     // keeps one request's bytes together
        std::vector<std::byte> in; // receiver thread: response bytes not yet parsed
        // Under mutex_:
        bool closed = false;
        std::deque<outgoing> outbox; // stream: requests not yet offered
        bool offering = false;       // stream: a request sits in the socket, maybe partly read
        bool sending = false;        // ...and is still being sent
        std::uint64_t offered_seq = 0;
    };
    struct pending {
        std::size_t channel = 0;
        std::uint64_t type = 0;
        std::uint64_t len = 0;
        callback done;
        std::shared_ptr<fake_request> req; // kept for DM_USER_CHANNEL_REQUEUE_ON_CLOSE
    };
    using completions = std::vector<std::pair<callback, fake_response>>;

    bool streams() const noexcept { return !opts_.part2 || opts_.stream; }

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
    // Bytes sent on the channel that the daemon has not read yet (a stream's skbs stay
    // charged to the sender until read in full).
    static std::size_t unread(const chan& ch) {
        int n = 0;
        return ::ioctl(ch.fd.get(), SIOCOUTQ, &n) == 0 && n > 0 ? static_cast<std::size_t>(n) : 0;
    }

    // Blocking send of a whole message (datagrams) or of stream bytes, optionally in pieces.
    void send_all(chan& ch, const std::byte* p, std::size_t n, bool pieces) {
        if (!streams()) {
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
        // The fd goes with the request's last socket buffer (the first of a send gets it):
        // a request of more than one (a header and 32 KiB fit in one) goes in two sends,
        // its last 4 KiB apart.
        constexpr std::size_t one_buffer = (32 << 10) + 512, tail = 4 << 10;
        std::size_t step = pieces && opts_.piece ? opts_.piece : n > one_buffer ? n - tail : n;
        while (n > 0) {
            if (opts_.delay.count())
                std::this_thread::sleep_for(opts_.delay);
            ssize_t k = send_stream(ch, p, std::min(step, n), /*last=*/step >= n);
            if (k < 0) {
                if (errno == EINTR)
                    continue;
                return; // the daemon closed the channel; the request stays pending
            }
            p += k;
            n -= static_cast<std::size_t>(k);
        }
    }

    // The bytes that end a request carry a file descriptor (SCM_RIGHTS; a read(2) drops
    // it unopened): a stream read that takes such bytes whole ends with them, so it never
    // goes on into the next request, even one sent while it copies. (Only the daemon's
    // first read of a request takes that fd; a read that ends a request begun by an earlier
    // one is kept from the next by wait_for_read_in_progress.)
    ssize_t send_stream(chan& ch, const std::byte* p, std::size_t n, bool last) {
        iovec iov{const_cast<std::byte*>(p), n};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
        if (last) {
            msg.msg_control = control;
            msg.msg_controllen = sizeof control;
            cmsghdr* c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            const int marker = wake_.get();
            std::memcpy(CMSG_DATA(c), &marker, sizeof marker);
        }
        return ::sendmsg(ch.fd.get(), &msg, MSG_NOSIGNAL);
    }

    // Stream channels: sends the next request once the daemon has read all of the last.
    // Called after a request is queued and on each EPOLLOUT (the daemon read something).
    void offer(chan& ch) {
        for (;;) {
            outgoing next;
            {
                std::lock_guard lock(mutex_);
                if (ch.offering) {
                    if (ch.sending || unread(ch) > 0)
                        return; // its sender or the next EPOLLOUT comes back here
                    ch.offering = false;
                }
                if (ch.closed || ch.outbox.empty())
                    return;
                next = std::move(ch.outbox.front());
                ch.outbox.pop_front();
                ch.offering = ch.sending = true;
                ch.offered_seq = next.seq;
            }
            wait_for_read_in_progress(ch);
            {
                std::lock_guard lock(ch.send_mutex);
                send_all(ch, next.bytes.data(), next.bytes.size(), true);
            }
            std::lock_guard lock(mutex_);
            ch.sending = false; // then look again: the daemon may have read it all already
        }
    }
    // The daemon's end of the channel (this process holds it: the fake is in-process), or
    // nothing once the daemon has closed it (its number may since name another file).
    static unique_fd daemon_end(const chan& ch) {
        unique_fd peer(::fcntl(ch.peer_fd, F_DUPFD_CLOEXEC, 0));
        struct stat st {};
        if (!peer || ::fstat(peer.get(), &st) != 0 || st.st_ino != ch.peer_ino)
            return {};
        return peer;
    }

    // A stream read goes on into whatever follows the skb it finished, unless that skb held
    // an fd, and a request read in pieces held its fd only in the piece read first. So a read
    // taking the rest of the last request could run into the next one, were it sent while
    // that read copies (the last request's bytes are all consumed, so offer() would send):
    // two requests in one read, which the module never returns. A peek takes the daemon
    // socket's read lock (af_unix's iolock, held through a read's copying, dropped while it
    // sleeps for data), so it returns only once such a read has ended.
    static void wait_for_read_in_progress(const chan& ch) {
        if (unique_fd peer = daemon_end(ch)) {
            std::byte b;
            [[maybe_unused]] auto r = ::recv(peer.get(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
        }
    }

    // The module drops what is left of a request answered before it was read in full.
    // Under mutex_, so that offer() cannot send the next request meanwhile: the socket
    // then holds nothing but this request's rest.
    void drop_unread_rest(chan& ch, std::uint64_t seq) {
        std::lock_guard lock(mutex_);
        if (!ch.offering || ch.sending || ch.offered_seq != seq)
            return;
        unique_fd peer = daemon_end(ch);
        if (!peer)
            return; // the daemon closed it
        std::byte sink[4096];
        for (;;) {
            int n = 0;
            if (::ioctl(peer.get(), SIOCINQ, &n) != 0 || n <= 0)
                return;
            if (::recv(peer.get(), sink, std::min<std::size_t>(sizeof sink, n), MSG_DONTWAIT) <= 0)
                return;
        }
    }

    void send_request(std::uint64_t seq, fake_request r, callback on_done) {
        std::shared_ptr<chan> ch;
        std::vector<std::byte> msg(header_size + r.payload.size());
        request h{seq, r.type, r.flags, r.sector, r.len, {}};
        encode_request(std::span<std::byte, header_size>(msg.data(), header_size), h);
        if (!r.payload.empty())
            std::memcpy(msg.data() + header_size, r.payload.data(), r.payload.size());
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
                                    std::make_shared<fake_request>(std::move(r))};
            if (streams())
                ch->outbox.push_back(outgoing{seq, std::move(msg)});
        }
        if (streams()) {
            offer(*ch);
            return;
        }
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

    // Parses the responses in the channel's bytes as the module parses its writes: back to
    // back, each possibly in pieces (what is incomplete waits for more).
    void take_responses(chan& ch, completions& done) {
        std::size_t at = 0;
        while (ch.in.size() - at >= header_size) {
            request h = decode_header(
                std::span<const std::byte, header_size>(ch.in.data() + at, header_size));
            std::uint64_t need = 0;
            {
                std::lock_guard lock(mutex_);
                auto it = pending_.find(h.seq);
                if (it == pending_.end() || it->second.channel != ch.index) {
                    violations_.push_back(
                        fmt::format("channel {}: response for seq {} it does not hold (EINVAL)",
                                    ch.index, h.seq));
                    ch.in.clear(); // the module fails the write; its rest is lost with it
                    return;
                }
                if (it->second.type == DM_USER_REQ_MAP_READ && h.type == DM_USER_RESP_SUCCESS)
                    need = it->second.len;
                if (ch.in.size() - at - header_size < need)
                    break; // the payload comes with the next writes
                pending p = std::move(it->second);
                pending_.erase(it);
                fake_response r;
                r.result = h.type;
                if (h.type > DM_USER_RESP_UNSUPPORTED) {
                    violations_.push_back(fmt::format(
                        "channel {}: seq {} answered with result {} (EINVAL; the request fails)",
                        ch.index, h.seq, h.type));
                    r.result = DM_USER_RESP_ERROR;
                }
                const auto* data = ch.in.data() + at + header_size;
                r.data.assign(data, data + need);
                done.emplace_back(std::move(p.done), std::move(r));
            }
            if (streams())
                drop_unread_rest(ch, h.seq);
            at += header_size + need;
        }
        ch.in.erase(ch.in.begin(), ch.in.begin() + static_cast<std::ptrdiff_t>(at));
    }

    // Requests the channel held fail, or go to another channel when the daemon asked
    // for DM_USER_CHANNEL_REQUEUE_ON_CLOSE.
    void channel_closed(chan& ch, completions& done) {
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, ch.fd.get(), nullptr);
        std::vector<std::pair<std::uint64_t, pending>> again;
        {
            std::lock_guard lock(mutex_);
            ch.closed = true;
            ch.outbox.clear();
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

    // Reads everything the daemon wrote (edge-triggered: until EAGAIN).
    void receive(chan& ch, std::vector<std::byte>& buf, completions& done) {
        for (;;) {
            ssize_t k = ::recv(ch.fd.get(), buf.data(), buf.size(), MSG_DONTWAIT);
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0 && errno == EAGAIN)
                return;
            if (k <= 0) {
                channel_closed(ch, done);
                return;
            }
            ch.in.insert(ch.in.end(), buf.data(), buf.data() + k);
            take_responses(ch, done);
            response_bytes_ += static_cast<std::uint64_t>(k);
        }
    }

    void receive_loop() {
        std::vector<std::byte> buf(header_size + opts_.max_payload + (1u << 20));
        epoll_event events[64];
        while (!quit_) {
            int n = ::epoll_wait(epoll_.get(), events, 64, 200);
            if (n < 0 && errno != EINTR)
                break;
            completions done;
            for (int i = 0; i < n; ++i) {
                if (events[i].data.u64 == wake_token) {
                    std::uint64_t v;
                    [[maybe_unused]] auto r = ::read(wake_.get(), &v, sizeof v);
                    continue;
                }
                auto ch = channel_at(events[i].data.u64);
                bool closed;
                {
                    std::lock_guard lock(mutex_);
                    closed = ch->closed;
                }
                if (closed)
                    continue;
                if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    receive(*ch, buf, done);
                if (events[i].events & EPOLLOUT)
                    offer(*ch);
            }
            for (auto& [cb, resp] : done)
                if (cb)
                    cb(std::move(resp));
        }
    }

    fake_options opts_;
    unique_fd wake_;
    unique_fd epoll_;
    std::thread receiver_;
    std::atomic<bool> quit_{false};
    std::atomic<std::uint64_t> next_seq_{1};
    std::atomic<std::uint64_t> channel_flags_{0};
    std::atomic<std::uint64_t> requeued_{0};
    std::atomic<std::uint64_t> response_bytes_{0};
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
