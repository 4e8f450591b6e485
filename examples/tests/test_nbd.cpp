// dmuser-nbd's store against a real NBD server: nbdkit's memory plugin on a Unix socket, the
// SDK's server and fake kernel in between. Every operation, several threads each with a
// connection of its own, the server killed (requests fail, none hangs), and --reconnect.
#include "nbd_store.hpp"
#include "server_fixture.hpp"

#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

using namespace dmuser::examples;
using dmuser::testing::fake_kernel;
using dmuser::testing::fake_options;
using test::pattern;
using test::running_server;

namespace {

// nbdkit serving 64 MiB of memory on a Unix socket, for as long as this lives.
class nbdkit_memory {
public:
    explicit nbdkit_memory(std::string socket)
        : socket_(std::move(socket)), pidfile_(socket_ + ".pid") {
        start();
    }
    ~nbdkit_memory() { stop(); }
    void start() {
        ::unlink(socket_.c_str());
        ::unlink(pidfile_.c_str());
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::execlp("nbdkit", "nbdkit", "--foreground", "--unix", socket_.c_str(), "--pidfile",
                     pidfile_.c_str(), "memory", "64M", static_cast<char*>(nullptr));
            ::_exit(127);
        }
        // nbdkit writes its pid file once it accepts connections (or it exited: fail).
        for (;;) {
            if (::access(pidfile_.c_str(), F_OK) == 0)
                return;
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                FAIL("nbdkit exited before serving (is it installed?)");
            }
            ::usleep(10000);
        }
    }
    void stop() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
            pid_ = -1;
        }
        ::unlink(socket_.c_str());
        ::unlink(pidfile_.c_str());
    }
    std::string uri() const { return "nbd+unix:///?socket=" + socket_; }

private:
    std::string socket_;
    std::string pidfile_;
    pid_t pid_ = -1;
};

std::string socket_path() {
    return "/tmp/dmuser-nbd-test-" + std::to_string(::getpid()) + ".sock";
}

} // namespace

TEST_CASE("nbd store: every operation through nbdkit, two threads with a connection each") {
    nbdkit_memory server(socket_path());
    nbd_store store({.uri = server.uri()});
    CHECK(store.size() == (64u << 20));
    CHECK(store.capabilities().flush);
    CHECK(store.capabilities().discard);
    fake_options fo;
    fo.device_bytes = store.size();
    fake_kernel k(fo);
    running_server s(store, k, {.threads = 2, .channels = 4, .depth = 8});
    std::vector<std::future<dmuser::testing::fake_response>> writes;
    for (int i = 0; i < 64; ++i)
        writes.push_back(k.submit({.type = DM_USER_REQ_MAP_WRITE,
                                   .sector = std::uint64_t(i) * 256,
                                   .len = 65536,
                                   .payload = pattern(65536, i)}));
    for (auto& f : writes)
        CHECK(f.get().result == DM_USER_RESP_SUCCESS);
    for (int i = 0; i < 64; i += 7)
        CHECK(k.read(std::uint64_t(i) * 256 * 512, 65536).data == pattern(65536, i));
    CHECK(k.write(0, pattern(4096, 99), DM_USER_REQ_MAP_FLAG_FUA).result == DM_USER_RESP_SUCCESS);
    CHECK(k.flush().result == DM_USER_RESP_SUCCESS);
    CHECK(k.op(DM_USER_REQ_MAP_WRITE_ZEROES, 0, 65536).result == DM_USER_RESP_SUCCESS);
    CHECK(k.read(0, 65536).data == std::vector<std::byte>(65536));
    CHECK(k.op(DM_USER_REQ_MAP_DISCARD, 65536, 65536).result == DM_USER_RESP_SUCCESS);
    CHECK(s.stop() == 0);
    CHECK(k.violations().empty());
}

TEST_CASE("nbd store: a server that goes away fails requests without hanging; --reconnect "
          "recovers") {
    for (bool reconnect : {false, true}) {
        nbdkit_memory server(socket_path());
        nbd_store store({.uri = server.uri(), .reconnect = reconnect});
        fake_options fo;
        fo.device_bytes = store.size();
        fake_kernel k(fo);
        running_server s(store, k);
        CHECK(k.write(4096, pattern(4096, 1)).result == DM_USER_RESP_SUCCESS);
        server.stop();
        CHECK(k.read(4096, 4096).result == DM_USER_RESP_ERROR);
        CHECK(k.read(4096, 4096).result == DM_USER_RESP_ERROR); // still down: fails again
        server.start();                                         // a new, empty memory export
        const auto again = k.write(0, pattern(512, 2)).result;
        CHECK(again == (reconnect ? DM_USER_RESP_SUCCESS : DM_USER_RESP_ERROR));
        CHECK(s.stop() == 0);
        CHECK(k.violations().empty());
    }
}
