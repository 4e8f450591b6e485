// The decisions of the server's read strategies and responder (detail/read_rules.hpp),
// each alone: no ring, no channel, no store.
#include "dmuser/detail/read_rules.hpp"

#include <array>
#include <catch2/catch.hpp>
#include <cstring>

namespace {

using dmuser::header_size;
using dmuser::detail::whole_read_verdict;
using kind = whole_read_verdict::kind;

std::array<std::byte, header_size> header_of(std::uint64_t type, std::uint64_t len,
                                             std::uint64_t seq = 7) {
    std::array<std::byte, header_size> h{};
    dmuser::request r;
    r.seq = seq;
    r.type = type;
    r.sector = 8;
    r.len = len;
    dmuser::encode_request(h, r);
    return h;
}

whole_read_verdict judge(std::uint64_t type, std::uint64_t len, std::size_t n,
                         bool split_writes = false) {
    const dmuser::detail::whole_read_limits limits{.read_size = split_writes ? 8192u : 65536u,
                                                   .max_payload = 65536,
                                                   .split_writes = split_writes};
    auto h = header_of(type, len);
    return dmuser::detail::judge_whole_read(h, n, limits);
}

} // namespace

TEST_CASE("read rules: what a read's result says before its bytes") {
    using dmuser::detail::classify_read;
    using dmuser::detail::read_status;
    CHECK(classify_read(40) == read_status::bytes);
    CHECK(classify_read(-EAGAIN) == read_status::retry);
    CHECK(classify_read(-EINTR) == read_status::retry);
    CHECK(classify_read(-ECANCELED) == read_status::retry);
    CHECK(classify_read(0) == read_status::end_of_file);
    CHECK(classify_read(-ENOTBLK) == read_status::target_removed);
    CHECK(classify_read(-EIO) == read_status::failed);
    CHECK(classify_read(-EFAULT) == read_status::failed);
}

TEST_CASE("read rules: a whole-message read (Part 2)") {
    SECTION("less than a header is nothing to answer") {
        CHECK(judge(DM_USER_REQ_MAP_READ, 4096, 39).what == kind::too_short);
        CHECK(judge(DM_USER_REQ_MAP_READ, 4096, 0).what == kind::too_short);
    }
    SECTION("whole requests, decoded") {
        auto v = judge(DM_USER_REQ_MAP_READ, 4096, header_size);
        CHECK(v.what == kind::request);
        CHECK(v.bad.empty());
        CHECK(v.req.seq == 7);
        CHECK(v.req.sector == 8);
        CHECK(v.req.len == 4096);
        v = judge(DM_USER_REQ_MAP_WRITE, 4096, header_size + 4096);
        CHECK(v.what == kind::request);
        CHECK(v.bad.empty());
        CHECK(judge(DM_USER_REQ_MAP_WRITE, 0, header_size).bad.empty()); // a flush
        CHECK(judge(DM_USER_REQ_MAP_DISCARD, 1 << 30, header_size).bad.empty());
    }
    SECTION("malformed: answered ERROR, with the reason") {
        CHECK(judge(DM_USER_REQ_MAP_WRITE, 4096, header_size + 100).bad ==
              "message shorter than its header says");
        CHECK(judge(DM_USER_REQ_MAP_WRITE, 4096, header_size + 5000).bad ==
              "message longer than its header says");
        CHECK(judge(DM_USER_REQ_MAP_READ, 512, header_size + 512).bad ==
              "message longer than its header says");
        CHECK(judge(DM_USER_REQ_MAP_WRITE, 131072, header_size + 65536).bad ==
              "length over the maximum payload");
        CHECK(judge(DM_USER_REQ_MAP_WRITE, 131072, header_size + 65536).what == kind::request);
    }
    SECTION("a WRITE the module split fills the read's buffer exactly") {
        CHECK(judge(DM_USER_REQ_MAP_WRITE, 32768, header_size + 8192, true).what ==
              kind::part_of_write);
        // Short of a full buffer it is malformed: its "rest" would never come.
        auto v = judge(DM_USER_REQ_MAP_WRITE, 32768, header_size + 100, true);
        CHECK(v.what == kind::request);
        CHECK(v.bad == "message shorter than its header says");
        // Only WRITEs are split, and only when the server reads them in two.
        CHECK(judge(DM_USER_REQ_MAP_WRITE, 32768, header_size + 8192, false).bad ==
              "message shorter than its header says");
        CHECK(judge(DM_USER_REQ_MAP_WRITE, 32768, header_size + 32768, true).bad.empty());
    }
}

TEST_CASE("read rules: Part 1's payload after a header that came alone") {
    using dmuser::detail::plan_stream_payload;
    dmuser::request r;
    r.type = DM_USER_REQ_MAP_WRITE;
    r.len = 4096;
    auto p = plan_stream_payload(r, 65536);
    CHECK_FALSE(p.skip);
    CHECK(p.read == 4096);
    CHECK(p.buffer == 4096);
    r.len = 1 << 20; // over the maximum: read and dropped, so the stream stays in step
    p = plan_stream_payload(r, 65536);
    CHECK(p.skip);
    CHECK(p.read == r.len);
    CHECK(p.buffer == 0);
    r.type = DM_USER_REQ_MAP_READ; // a READ carries none, but its data needs the buffer
    r.len = 8192;
    p = plan_stream_payload(r, 65536);
    CHECK_FALSE(p.skip);
    CHECK(p.read == 0);
    CHECK(p.buffer == 8192);
    r.len = 1 << 20; // too big to serve: no buffer for it (check_request answers ERROR)
    CHECK(plan_stream_payload(r, 65536).buffer == 0);
    r.type = DM_USER_REQ_MAP_DISCARD;
    p = plan_stream_payload(r, 65536);
    CHECK(p.read == 0);
    CHECK(p.buffer == 0);
}

TEST_CASE("read rules: a response is its header, then a READ's data") {
    std::array<std::byte, header_size> header{};
    iovec iov[2]{};
    std::size_t bytes = 0;
    dmuser::request r;
    r.seq = 42;
    r.type = DM_USER_REQ_MAP_READ;
    r.len = 4096;
    std::array<std::byte, 4096> data{};
    CHECK(dmuser::detail::lay_out_response(header, r, dmuser::result::success, data, iov, bytes) ==
          2);
    CHECK(bytes == header_size + 4096);
    CHECK(iov[0].iov_base == header.data());
    CHECK(iov[1].iov_base == data.data());
    CHECK(iov[1].iov_len == 4096);
    auto echoed = dmuser::decode_header(header);
    CHECK(echoed.seq == 42);
    CHECK(echoed.type == DM_USER_RESP_SUCCESS);
    CHECK(dmuser::detail::lay_out_response(header, r, dmuser::result::error, {}, iov, bytes) == 1);
    CHECK(bytes == header_size);
    CHECK(dmuser::decode_header(header).type == DM_USER_RESP_ERROR);
}
