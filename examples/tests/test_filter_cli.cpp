// --filter on the example daemons: specs parsed, bad ones named in one line, and a stack built
// at run time serving through the fake kernel, outermost filter first.
#include "filter_cli.hpp"
#include "server_fixture.hpp"

using namespace dmuser::examples;
using dmuser::testing::fake_kernel;
using dmuser::testing::fake_options;
using test::pattern;
using test::running_server;

TEST_CASE("filter specs: bad names, keys and values are refused with the reason") {
    test::mem_store base(1 << 20);
    auto refused = [&](std::string spec, std::string why) {
        try {
            (void)filter_stack(base, {spec});
            FAIL("accepted --filter " << spec);
        } catch (const std::invalid_argument& e) {
            CHECK_THAT(e.what(), Catch::Contains(why));
        }
    };
    refused("frob", "no filter is named 'frob'");
    refused("delay:read", "is not KEY=VALUE");
    refused("delay:read=5", "unit must be us, ms or s");
    refused("delay:scan=5ms", "unknown operation 'scan'");
    refused("error:rate=1.5", "not a chance from 0 to 1");
    refused("error:color=red", "has no option 'color'");
    refused("offset:offset=2M", "past the store's end");
    refused("offset:partition=1", "no MBR signature");
    refused("read-only:x=1", "has no option 'x'");
    refused("cache:mode=sometimes", "write-through or write-back");
    refused("cache:block=1000", "power of two");
}

TEST_CASE("filter stack: outermost first, capabilities as the stack has them") {
    test::mem_store base(4 << 20);
    // The offset filter is outermost, so the error filter below it sees the store's offsets:
    // its [1M, 2M) is the window's first MiB, whose writes fail; reads go through.
    auto stack = filter_stack(base, {"offset:offset=1M,length=2M", "error:op=write,from=1M,to=2M",
                                     "delay:all=0us", "cache:size=1M,block=64K,mode=write-back",
                                     "stats:file=/dev/null"});
    CHECK(stack.size() == (2u << 20));
    CHECK(stack.capabilities().discard);
    fake_options fo;
    fo.device_bytes = stack.size();
    fake_kernel k(fo);
    running_server s(stack, k);
    CHECK(k.write(0, pattern(4096, 1)).result == DM_USER_RESP_ERROR);
    CHECK(k.write(1 << 20, pattern(4096, 2)).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(1 << 20, 4096).data == pattern(4096, 2));
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS); // the write-back cache lets go
    CHECK(s.stop() == 0);
    // Window offset 1M is the store's 2M.
    CHECK(std::memcmp(base.mem.data() + (2 << 20), pattern(4096, 2).data(), 4096) == 0);

    auto ro = filter_stack(base, {"read-only"});
    CHECK(ro.capabilities().read_only);
    CHECK_FALSE(ro.capabilities().discard);
}
