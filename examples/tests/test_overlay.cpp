// The copy-on-write overlay's map on the host: runs, persistence through flush snapshots,
// the ordering rule (a bit set after a snapshot is not in it), and refusal of a foreign file.
#include "overlay.hpp"

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>
#include <unistd.h>
#include <vector>

using namespace dmuser::examples;

namespace {

struct TempPath {
    std::string path;
    TempPath() {
        char tmpl[] = "/tmp/dmuser-overlay-XXXXXX";
        int fd = ::mkstemp(tmpl);
        REQUIRE(fd >= 0);
        ::close(fd);
        ::unlink(tmpl); // Overlay creates it
        path = tmpl;
    }
    ~TempPath() { ::unlink(path.c_str()); }
};

using Runs = std::vector<std::tuple<std::uint64_t, std::uint64_t, bool>>;

Runs runs_of(const Overlay& o, std::uint64_t first, std::uint64_t count) {
    Runs out;
    o.for_runs(first, count, [&](auto f, auto n, bool in) { out.emplace_back(f, n, in); });
    return out;
}

} // namespace

TEST_CASE("overlay runs split where the map changes", "[overlay]") {
    TempPath tmp;
    Overlay o(tmp.path, 1 << 20, 0x1234);
    CHECK(runs_of(o, 0, 16) == Runs{{0, 16, false}});
    o.mark(3, 2);
    o.mark(10, 1);
    CHECK(o.has(3));
    CHECK(o.has(4));
    CHECK_FALSE(o.has(5));
    CHECK(runs_of(o, 0, 16) ==
          Runs{{0, 3, false}, {3, 2, true}, {5, 5, false}, {10, 1, true}, {11, 5, false}});
    CHECK(runs_of(o, 4, 1) == Runs{{4, 1, true}});
    CHECK(o.sectors_mapped() == 3);
}

TEST_CASE("the map survives a reopen once flushed, and only what was snapshotted", "[overlay]") {
    TempPath tmp;
    const std::uint64_t size = 64 << 20; // 131072 sectors: a map of 4 pages
    {
        Overlay o(tmp.path, size, 0xabcd);
        o.mark(7, 1);
        o.mark(100000, 8); // another map page
        auto snap = o.snapshot();
        CHECK(snap.pages.size() == 2);
        o.mark(50000, 1); // after the snapshot: its data may not be synced yet
        REQUIRE(!o.write_snapshot(snap));
        // What a crash now would leave: the file as it is, read by a second opener.
        Overlay crashed(tmp.path, size, 0xabcd);
        CHECK(crashed.has(7));
        CHECK(crashed.has(100007));
        CHECK_FALSE(crashed.has(50000));
    }
    // A clean close wrote the rest.
    Overlay again(tmp.path, size, 0xabcd);
    CHECK(again.has(7));
    CHECK(again.has(50000));
    CHECK(again.sectors_mapped() == 10);
}

TEST_CASE("an older snapshot never overwrites a newer one", "[overlay]") {
    TempPath tmp;
    const std::uint64_t size = 1 << 20;
    {
        Overlay o(tmp.path, size, 1);
        o.mark(1, 1);
        auto older = o.snapshot();
        o.mark(2, 1);
        auto newer = o.snapshot();
        REQUIRE(!o.write_snapshot(newer));
        REQUIRE(!o.write_snapshot(older)); // completes last: skipped
        Overlay peek(tmp.path, size, 1);
        CHECK(peek.has(1));
        CHECK(peek.has(2));
    }
}

TEST_CASE("an overlay of another image or a foreign file is refused", "[overlay]") {
    TempPath tmp;
    { Overlay o(tmp.path, 1 << 20, 42); }
    CHECK_THROWS_WITH(Overlay(tmp.path, 1 << 20, 43), Catch::Contains("another image"));
    CHECK_THROWS_WITH(Overlay(tmp.path, 2 << 20, 42), Catch::Contains("another image"));
    {
        dmuser::unique_fd fd(::open(tmp.path.c_str(), O_WRONLY | O_CLOEXEC));
        REQUIRE(!pwrite_full(fd.get(), "junk", 4, 0));
    }
    CHECK_THROWS_WITH(Overlay(tmp.path, 1 << 20, 42), Catch::Contains("not an overlay"));
}
