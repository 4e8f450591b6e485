// dmuser/detail/read_rules.hpp: what the bytes of a channel read mean, and how a response
// is laid out: the decisions of the server's read strategies (Part 2 whole messages, the
// rest of a split WRITE, Part 1's header then payload) and of its responder, as pure
// functions. The server's coroutines do the I/O and apply them; tests/unit/
// test_read_rules.cpp checks each alone.
#pragma once

#include "dmuser/protocol.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <sys/uio.h>

namespace dmuser::detail {

// What a read's result says before any byte is looked at.
enum class read_status {
    bytes,          // res > 0
    retry,          // cancelled, interrupted or nothing there yet: read again
    end_of_file,    // 0: the fake kernel's (or a closed) channel: the target is gone
    target_removed, // ENOTBLK: the module's word that the target was removed
    failed,         // anything else: the server cannot go on
};

constexpr read_status classify_read(int res) noexcept {
    if (res > 0)
        return read_status::bytes;
    switch (res) {
    case -ECANCELED:
    case -EINTR:
    case -EAGAIN:
        return read_status::retry;
    case 0:
        return read_status::end_of_file;
    case -ENOTBLK:
        return read_status::target_removed;
    default:
        return read_status::failed;
    }
}

// A Part 2 whole-message read of `n` bytes into {header, a payload buffer of read_size}.
struct whole_read_limits {
    std::size_t read_size = 0;     // the payload buffer the read offered
    std::uint64_t max_payload = 0; // the module's bound
    bool split_writes = false;     // read_size < max_payload: larger WRITEs come in two reads
};

struct whole_read_verdict {
    enum class kind {
        too_short,     // not even a header: nothing to answer
        request,       // a request, whole (or malformed: `bad` says why, answered ERROR)
        part_of_write, // a WRITE the module split: its rest comes with the next read
    };
    kind what = kind::too_short;
    request req{}; // decoded, unless too_short
    std::string_view bad{};
};

inline whole_read_verdict judge_whole_read(std::span<const std::byte, header_size> header,
                                           std::size_t n, const whole_read_limits& l) noexcept {
    whole_read_verdict v;
    if (n < header_size)
        return v;
    v.what = whole_read_verdict::kind::request;
    v.req = decode_header(header);
    const request& r = v.req;
    const std::size_t expect = header_size + (r.carries_payload() ? r.len : 0);
    if (r.carries_payload() && r.len > l.max_payload)
        v.bad = "length over the maximum payload";
    else if (n < expect && l.split_writes && r.type == DM_USER_REQ_MAP_WRITE &&
             n == header_size + l.read_size)
        // The module splits a message only when it fills the read's buffer; a shorter
        // one is malformed, and waiting for its "rest" would wait for ever.
        v.what = whole_read_verdict::kind::part_of_write;
    else if (n < expect)
        v.bad = "message shorter than its header says";
    else if (n > expect)
        v.bad = "message longer than its header says";
    return v;
}

// Part 1: a header has come alone; what to do with the payload behind it.
struct stream_payload_plan {
    bool skip = false;        // over the maximum: read and drop it, so the stream stays in
                              // step, and answer ERROR
    std::uint64_t read = 0;   // bytes of payload to read into the buffer (or the store)
    std::uint64_t buffer = 0; // the buffer the request needs (its READ data, or payload)
};

inline stream_payload_plan plan_stream_payload(const request& r,
                                               std::uint64_t max_payload) noexcept {
    stream_payload_plan p;
    if (r.carries_payload() && r.len > max_payload) {
        p.skip = true;
        p.read = r.len;
        return p;
    }
    if (r.len <= max_payload && (r.type == DM_USER_REQ_MAP_READ || r.carries_payload()))
        p.buffer = r.len;
    if (r.carries_payload())
        p.read = r.len;
    return p;
}

// A response in iov[0..returned): its header (encoded into `header`), then the data a
// READ's SUCCESS carries. `bytes` gets its length.
inline int lay_out_response(std::span<std::byte, header_size> header, const request& req,
                            result status, std::span<const std::byte> data, iovec (&iov)[2],
                            std::size_t& bytes) noexcept {
    encode_response(header, req, status);
    iov[0] = iovec{header.data(), header_size};
    bytes = header_size + data.size();
    if (data.empty())
        return 1;
    iov[1] = iovec{const_cast<std::byte*>(data.data()), data.size()};
    return 2;
}

} // namespace dmuser::detail
