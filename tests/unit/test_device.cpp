// Device control without a kernel: DM ioctl buffer layout, the `user` table line, the status
// line. The answers the kernel would write are laid out here by hand, as drivers/md/dm-ioctl.c
// writes them (status records count `next` from the first record, version records from their own).
#include "dmuser/device.hpp"
#include "dmuser/serve_device.hpp"

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

using dmuser::user_table;
using dmuser::user_target_status;
using dmuser::dm::ioctl_buffer;

namespace {

unsigned char* raw(ioctl_buffer& b) {
    return static_cast<unsigned char*>(b.data());
}

// Writes a status record at `offset` from the data start; returns the aligned end offset.
std::size_t put_status_record(ioctl_buffer& b, std::size_t offset, std::uint64_t start,
                              std::uint64_t len, const char* type, const char* params) {
    dm_target_spec spec{};
    spec.sector_start = start;
    spec.length = len;
    std::strncpy(spec.target_type, type, sizeof spec.target_type - 1);
    auto* at = raw(b) + b.header().data_start + offset;
    const std::size_t end = offset + sizeof spec + std::strlen(params) + 1;
    const std::size_t aligned = (end + 7) & ~std::size_t{7};
    spec.next = static_cast<std::uint32_t>(aligned);
    std::memcpy(at, &spec, sizeof spec);
    std::memcpy(at + sizeof spec, params, std::strlen(params) + 1);
    return aligned;
}

} // namespace

TEST_CASE("a fresh ioctl buffer carries version, name and sizes", "[device][ioctl]") {
    ioctl_buffer b("disk0", 1000);
    const auto& h = b.header();
    CHECK(h.version[0] == 4);
    CHECK(h.version[1] == 0);
    CHECK(h.data_start == sizeof(dm_ioctl));
    CHECK(h.data_start % 8 == 0);
    CHECK(h.data_size == b.size());
    CHECK(b.size() >= sizeof(dm_ioctl) + 1000);
    CHECK(b.size() % 8 == 0);
    CHECK(std::string(h.name) == "disk0");
    CHECK(h.target_count == 0);
    CHECK_FALSE(b.buffer_full());
}

TEST_CASE("a name longer than DM_NAME_LEN is cut and stays NUL-terminated", "[device][ioctl]") {
    ioctl_buffer b(std::string(300, 'x'));
    CHECK(std::strlen(b.header().name) == DM_NAME_LEN - 1);
}

TEST_CASE("table load records are packed with relative next and padding", "[device][ioctl]") {
    ioctl_buffer b("d");
    REQUIRE(b.add_target(0, 2048, "user", "0 2048 ctl"));
    REQUIRE(b.add_target(2048, 8, "zero", ""));
    CHECK(b.header().target_count == 2);

    dm_target_spec first, second;
    const auto* data = raw(b) + b.header().data_start;
    std::memcpy(&first, data, sizeof first);
    CHECK(first.sector_start == 0);
    CHECK(first.length == 2048);
    CHECK(std::string(first.target_type) == "user");
    CHECK(std::string(reinterpret_cast<const char*>(data + sizeof first)) == "0 2048 ctl");
    CHECK(first.next % 8 == 0);
    CHECK(first.next >= sizeof first + std::strlen("0 2048 ctl") + 1);

    std::memcpy(&second, data + first.next, sizeof second);
    CHECK(second.sector_start == 2048);
    CHECK(second.length == 8);
    CHECK(std::string(second.target_type) == "zero");
    CHECK(data[first.next + sizeof second] == 0);
}

TEST_CASE("add_target refuses what does not fit, grow makes room", "[device][ioctl]") {
    ioctl_buffer b("d", 64);
    CHECK_FALSE(b.add_target(0, 1, "a-type-name-too-long", ""));
    const std::string params(200, 'p');
    CHECK_FALSE(b.add_target(0, 1, "user", params));
    CHECK(b.header().target_count == 0);
    const auto before = b.size();
    b.grow();
    b.grow();
    CHECK(b.size() > before);
    CHECK(b.header().data_size == b.size());
    CHECK(std::string(b.header().name) == "d");
    CHECK(b.add_target(0, 1, "user", params));
}

TEST_CASE("status answers are read with next counted from the first record", "[device][ioctl]") {
    ioctl_buffer b("d");
    auto end = put_status_record(b, 0, 0, 100, "user", "queued=0 completed=12");
    end = put_status_record(b, end, 100, 50, "zero", "");
    end = put_status_record(b, end, 150, 7, "error", "e");
    b.header().target_count = 3;
    b.header().data_size = static_cast<std::uint32_t>(b.header().data_start + end);

    auto targets = b.targets();
    REQUIRE(targets);
    REQUIRE(targets->size() == 3);
    CHECK((*targets)[0].type == "user");
    CHECK((*targets)[0].length == 100);
    CHECK((*targets)[0].params == "queued=0 completed=12");
    CHECK((*targets)[1].type == "zero");
    CHECK((*targets)[1].start == 100);
    CHECK((*targets)[1].params.empty());
    CHECK((*targets)[2].type == "error");
    CHECK((*targets)[2].start == 150);
    CHECK((*targets)[2].params == "e");
}

TEST_CASE("a status answer that runs past the data is rejected", "[device][ioctl]") {
    ioctl_buffer b("d", 256);
    put_status_record(b, 0, 0, 100, "user", "abc");
    b.header().target_count = 1;
    // The kernel says it wrote less than the record: the string has no NUL inside the answer.
    b.header().data_size =
        static_cast<std::uint32_t>(b.header().data_start + sizeof(dm_target_spec) + 2);
    CHECK_FALSE(b.targets());
    // A data_size past our buffer is not trusted either.
    b.header().data_size = 1u << 30;
    std::memset(raw(b) + b.header().data_start + sizeof(dm_target_spec), 'x',
                b.size() - b.header().data_start - sizeof(dm_target_spec));
    CHECK_FALSE(b.targets());
}

TEST_CASE("version lists are read with next counted from each entry", "[device][ioctl]") {
    ioctl_buffer b;
    auto* data = raw(b) + b.header().data_start;
    auto put = [&](std::size_t at, const char* name, std::uint32_t major, std::uint32_t minor,
                   std::uint32_t next) {
        dm_target_versions v{};
        v.next = next;
        v.version[0] = major;
        v.version[1] = minor;
        v.version[2] = 3;
        std::memcpy(data + at, &v, sizeof v);
        std::memcpy(data + at + sizeof v, name, std::strlen(name) + 1);
    };
    put(0, "linear", 1, 4, 24);
    put(24, "user", 2, 0, 24);
    put(48, "zero", 1, 2, 0);
    b.header().data_size = static_cast<std::uint32_t>(b.header().data_start + 72);

    auto versions = b.versions();
    REQUIRE(versions);
    REQUIRE(versions->size() == 3);
    CHECK((*versions)[1].name == "user");
    CHECK((*versions)[1].major == 2);
    CHECK((*versions)[1].minor == 0);
    CHECK((*versions)[1].patch == 3);
    CHECK((*versions)[2].name == "zero");

    put(48, "zero", 1, 2, 4096); // next points outside the answer
    CHECK_FALSE(b.versions());
}

TEST_CASE("an empty version answer is an empty list", "[device][ioctl]") {
    ioctl_buffer b;
    b.header().data_size = offsetof(dm_ioctl, data);
    auto versions = b.versions();
    REQUIRE(versions);
    CHECK(versions->empty());
}

TEST_CASE("the user table line", "[device][table]") {
    user_table t;
    t.name = "disk";
    t.sectors = 2048;
    CHECK(t.line() == "0 2048 user 0 2048 disk");
    t.control = "ctl";
    CHECK(t.params() == "0 2048 ctl");
    t.no_discard = true;
    t.no_write_zeroes = true;
    CHECK(t.line() == "0 2048 user 0 2048 ctl 2 no_discard no_write_zeroes");
    t.no_flush = true;
    t.no_secure_erase = true;
    t.no_discard = false;
    t.no_write_zeroes = false;
    CHECK(t.params() == "0 2048 ctl 2 no_flush no_secure_erase");
    t.no_flush = false;
    t.max_payload = 4u << 20;
    CHECK(t.params() == "0 2048 ctl 3 no_secure_erase max_payload 4194304");
}

TEST_CASE("Android's user target (1.x) gets exactly its three arguments", "[device][table]") {
    user_table t;
    t.name = "rd";
    t.sectors = 262144;
    t.no_flush = true;
    t.no_secure_erase = true;
    t.max_payload = 4u << 20;
    // Android's constructor takes exactly <start> <length> <control>.
    CHECK(t.line(1) == "0 262144 user 0 262144 rd");
    CHECK(t.params(1) == "0 262144 rd");
    // This project's module (2.x) takes the options.
    CHECK(t.params(2) == "0 262144 rd 4 no_flush no_secure_erase max_payload 4194304");
    CHECK(t.params(2) == t.params());
}

TEST_CASE("adoption checks the control name, and takes an empty table line on trust",
          "[device][table]") {
    user_table t;
    t.name = "rd";
    t.sectors = 2048;
    CHECK_FALSE(dmuser::user_adoption_problem(t, "0 2048 rd"));
    CHECK_FALSE(dmuser::user_adoption_problem(t, "0 2048 rd 1 no_flush"));
    CHECK(dmuser::user_adoption_problem(t, "0 2048 other"));
    CHECK(dmuser::user_adoption_problem(t, "0 2048"));
    // Android's target has no .status: its table line is empty, so nothing can be checked.
    CHECK_FALSE(dmuser::user_adoption_problem(t, ""));
}

TEST_CASE("bad table input is named before any ioctl", "[device][table]") {
    user_table t;
    t.name = "disk";
    t.sectors = 8;
    CHECK_FALSE(dmuser::user_table_problem(t));
    t.sectors = 0;
    CHECK(dmuser::user_table_problem(t)->find("size") != std::string::npos);
    t.sectors = 8;
    t.name = "a/b";
    CHECK(dmuser::user_table_problem(t)->find("'a/b'") != std::string::npos);
    t.name = "";
    CHECK(dmuser::user_table_problem(t));
    t.name = "ok";
    t.control = "has space";
    CHECK(dmuser::user_table_problem(t)->find("control name") != std::string::npos);
    t.control = std::string(65, 'c');
    CHECK(dmuser::user_table_problem(t));
    t.control = std::string(64, 'c');
    CHECK_FALSE(dmuser::user_table_problem(t));
    t.control = "a-b_c.d+e:f@g";
    CHECK_FALSE(dmuser::user_table_problem(t));
    t.control = "a,b";
    CHECK(dmuser::user_table_problem(t));
    t.control = "..";
    CHECK(dmuser::user_table_problem(t));
    t.control.clear();
    t.max_payload = 5000;
    CHECK(dmuser::user_table_problem(t)->find("max payload") != std::string::npos);
    t.max_payload = 128u << 20;
    CHECK(dmuser::user_table_problem(t));
    t.max_payload = 1u << 20;
    CHECK_FALSE(dmuser::user_table_problem(t));
}

TEST_CASE("status lines parse into counters, values and words", "[device][status]") {
    auto s = user_target_status::parse(
        "  v2.0.0 queued=3 inflight_read=1\tcompleted=18446744073709551615 "
        "mode=rw errors=x12 =odd\n");
    CHECK(s.counter("queued") == 3u);
    CHECK(s.counter("inflight_read") == 1u);
    CHECK(s.counter("completed") == 18446744073709551615ull);
    CHECK_FALSE(s.counter("errors"));
    CHECK(s.values.at("errors") == "x12");
    CHECK(s.values.at("mode") == "rw");
    REQUIRE(s.words.size() == 2);
    CHECK(s.words[0] == "v2.0.0");
    CHECK(s.words[1] == "=odd");
    CHECK(user_target_status::parse("").counters.empty());
}

namespace {
struct plain_store {
    std::uint64_t bytes = 1 << 20;
    std::uint64_t size() const { return bytes; }
    void read(std::uint64_t, std::span<std::byte>) {}
    void write(std::uint64_t, std::span<const std::byte>) {}
};
struct full_store : plain_store {
    void flush() {}
    void discard(std::uint64_t, std::uint64_t) {}
    void secure_erase(std::uint64_t, std::uint64_t) {}
};
std::vector<std::string> device_log;
void keep(dmuser::log::level, std::string_view line) {
    device_log.emplace_back(line);
}
} // namespace

TEST_CASE("serve_device's table turns off what the store cannot do", "[device][serve]") {
    dmuser::device_options o{.name = "d", .control = "c", .read_only = true};
    user_table plain = dmuser::table_for(plain_store{}, o);
    CHECK(plain.sectors == 2048);
    CHECK(plain.read_only);
    CHECK(plain.control_name() == "c");
    CHECK(plain.options() == std::vector<std::string>{"no_flush", "no_discard", "no_secure_erase"});
    CHECK(dmuser::table_for(full_store{}, o).options().empty());
}

TEST_CASE("serve_device refuses bad input in one line, before any ioctl", "[device][serve]") {
    auto old = dmuser::log::set_sink(&keep);
    plain_store odd{1000};
    device_log.clear();
    CHECK(dmuser::serve_device(odd, {.name = "odd"}) == 1);
    REQUIRE(device_log.size() == 1);
    CHECK(device_log[0].find("not a multiple of 512") != std::string::npos);
    plain_store ok;
    device_log.clear();
    CHECK(dmuser::serve_device(ok, {}) == 1);
    REQUIRE(device_log.size() == 1);
    CHECK(device_log[0].find("needs a name") != std::string::npos);
    CHECK_THROWS_AS(dmuser::open_device(plain_store{0}, {.name = "zero"}), std::system_error);
    dmuser::log::set_sink(old);
}
