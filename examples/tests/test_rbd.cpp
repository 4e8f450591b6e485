// dmuser-rbd's store where no cluster is needed: what it says when the cluster is not there.
// (Against a real cluster it runs in the VM: tests/vm/examples-rbd.sh.)
#include "rbd_store.hpp"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <unistd.h>

using namespace dmuser::examples;

namespace {

// A ceph.conf whose monitor address nothing listens on (port 1 of 127.0.0.1, refused at once).
std::string conf_without_monitor() {
    const std::string path = "/tmp/dmuser-rbd-test-" + std::to_string(::getpid()) + ".conf";
    std::ofstream(path) << "[global]\nmon host = 127.0.0.1:1\nauth client required = none\n";
    return path;
}

} // namespace

TEST_CASE("rbd store: an unreachable cluster is one error within the mount timeout") {
    const std::string conf = conf_without_monitor();
    const auto start = std::chrono::steady_clock::now();
    try {
        rbd_store store({.conf = conf, .image = "img", .mount_timeout = 1});
        FAIL("opened an image on a cluster that is not there");
    } catch (const std::system_error& e) {
        CHECK_THAT(e.what(), Catch::StartsWith("cannot connect to the Ceph cluster"));
        CHECK(std::string(e.what()).find('\n') == std::string::npos);
    }
    // The timeout given, not librados's 300 s.
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
    std::remove(conf.c_str());
}

TEST_CASE("rbd store: a ceph.conf that is not there is named") {
    try {
        rbd_store store({.conf = "/nonexistent/ceph.conf", .image = "img"});
        FAIL("opened an image without a configuration");
    } catch (const std::system_error& e) {
        CHECK_THAT(e.what(), Catch::StartsWith("cannot read /nonexistent/ceph.conf"));
    }
}
