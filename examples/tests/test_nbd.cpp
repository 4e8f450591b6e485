// dmuser-nbd's store against a real NBD server: nbdkit's memory plugin on a Unix socket, the
// SDK's server and fake kernel in between. Every operation, several threads each with a
// connection of its own, the server killed (requests fail, none hangs), and --reconnect.
#include "nbd_store.hpp"
#include "server_fixture.hpp"

#include <arpa/inet.h>
#include <array>
#include <charconv>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace dmuser::examples;
using dmuser::testing::fake_kernel;
using dmuser::testing::fake_options;
using test::pattern;
using test::running_server;

namespace {

// nbdkit serving 64 MiB of memory, on a Unix socket or on a loopback TCP port, for as long as
// this lives.
class nbdkit_memory {
public:
    struct on_tcp {};
    explicit nbdkit_memory(std::string socket)
        : socket_(std::move(socket)), pidfile_(socket_ + ".pid") {
        start();
    }
    // The port is bound here and handed to nbdkit by socket activation (LISTEN_FDS), so it is
    // known before nbdkit starts and no other program can take it in between.
    explicit nbdkit_memory(on_tcp)
        : pidfile_("/tmp/dmuser-nbd-test-" + std::to_string(::getpid()) + "-tcp.pid") {
        start();
    }
    ~nbdkit_memory() { stop(); }
    void start() {
        if (!socket_.empty())
            ::unlink(socket_.c_str());
        ::unlink(pidfile_.c_str());
        dmuser::unique_fd listener;
        if (socket_.empty())
            listener = listen_on_loopback();
        // What the child needs is made before fork: after it, only async-signal-safe calls.
        std::vector<std::string> env_strings;
        for (char** e = environ; *e; ++e)
            env_strings.emplace_back(*e);
        env_strings.push_back("LISTEN_FDS=1");
        env_strings.push_back("LISTEN_PID=" + std::string(20, '\0'));
        std::vector<char*> env;
        for (auto& e : env_strings)
            env.push_back(e.data());
        env.push_back(nullptr);
        char* listen_pid = env_strings.back().data() + std::strlen("LISTEN_PID=");
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            if (listener) {
                if (::dup2(listener.get(), 3) < 0 || ::fcntl(3, F_SETFD, 0) < 0)
                    ::_exit(126);
                std::to_chars(listen_pid, listen_pid + 19, ::getpid());
                ::execvpe("nbdkit",
                          const_cast<char* const*>(
                              std::array<const char*, 7>{"nbdkit", "--foreground", "--pidfile",
                                                         pidfile_.c_str(), "memory", "64M", nullptr}
                                  .data()),
                          env.data());
            } else {
                ::execlp("nbdkit", "nbdkit", "--foreground", "--unix", socket_.c_str(), "--pidfile",
                         pidfile_.c_str(), "memory", "64M", static_cast<char*>(nullptr));
            }
            ::_exit(127);
        }
        // nbdkit writes its pid file once it accepts connections (or it exited: fail). Our
        // copy of the listener closes on return: nbdkit's alone keeps the port, which then
        // refuses connections once nbdkit dies, as a stopped server's does.
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
        if (!socket_.empty())
            ::unlink(socket_.c_str());
        ::unlink(pidfile_.c_str());
    }
    std::string uri() const {
        return socket_.empty() ? "nbd://127.0.0.1:" + std::to_string(port_)
                               : "nbd+unix:///?socket=" + socket_;
    }

private:
    // A listening socket on 127.0.0.1: a free port the first time, the same one after (a
    // restarted server is found where the client knew it).
    dmuser::unique_fd listen_on_loopback() {
        dmuser::unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(fd);
        const int one = 1;
        ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(static_cast<std::uint16_t>(port_));
        REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(fd.get(), 16) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        port_ = ntohs(addr.sin_port);
        return fd;
    }

    std::string socket_; // empty: TCP
    std::string pidfile_;
    int port_ = 0;
    pid_t pid_ = -1;
};

std::string socket_path() {
    return "/tmp/dmuser-nbd-test-" + std::to_string(::getpid()) + ".sock";
}

// Every operation through nbdkit, two threads with a connection each.
void every_operation(const nbdkit_memory& server) {
    INFO(server.uri());
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

// A server that goes away fails requests without hanging; --reconnect recovers once it is back.
void server_gone(nbdkit_memory& server) {
    for (bool reconnect : {false, true}) {
        INFO(server.uri() << (reconnect ? ", --reconnect" : ""));
        server.stop();
        server.start();
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

// Runs check against nbdkit on a Unix socket, then on loopback TCP: a Catch2 section each.
template <typename Check>
void on_each_transport(Check check) {
    SECTION("on a Unix socket") {
        nbdkit_memory server(socket_path());
        check(server);
    }
    SECTION("on loopback TCP") {
        nbdkit_memory server(nbdkit_memory::on_tcp{});
        check(server);
    }
}

} // namespace

TEST_CASE("nbd store: every operation through nbdkit, two threads with a connection each") {
    on_each_transport([](nbdkit_memory& server) { every_operation(server); });
}

TEST_CASE("nbd store: a server that goes away fails requests without hanging; --reconnect "
          "recovers") {
    on_each_transport([](nbdkit_memory& server) { server_gone(server); });
}
