// rbd_store.hpp: a Ceph RBD image as a store, through librbd's asynchronous C API. One image
// handle serves every server thread (librbd's handles are thread-safe); each request starts
// one rbd_aio_* call and awaits it in a remote_completion in its own coroutine frame. librbd
// calls back on its own threads; the completion resumes the request on the ring of the
// thread that read it. Nothing of ours is allocated per request: the completion object is
// librbd's (rbd_aio_create_completion), released in its callback.
//
// A cluster that cannot be reached stalls requests rather than failing them: librbd resends
// an operation once the OSD is back (rados_osd_op_timeout is 0 unless ceph.conf sets it;
// then an operation that times out fails with an I/O error).
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/remote_completion.hpp"
#include "dmuser/task.hpp"

#include <cstdint>
#include <fmt/format.h>
#include <memory>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <span>
#include <string>
#include <sys/types.h>
#include <system_error>

namespace dmuser::examples {

struct rbd_options {
    std::string conf{}; // ceph.conf; empty: librados's search ($CEPH_CONF, /etc/ceph/...)
    std::string id{};   // client id ("admin" for client.admin); empty: librados's default
    std::string pool = "rbd";
    std::string image{};
    bool read_only = false;      // open the image read-only (the device is read-only too)
    unsigned mount_timeout = 30; // seconds to reach the monitors before giving up
};

class rbd_store {
public:
    // Connects to the cluster and opens the image; throws std::system_error with a one-line
    // reason (the cluster unreachable, no such pool or image).
    explicit rbd_store(const rbd_options& o) : read_only_(o.read_only) {
        rados_t cluster = nullptr;
        check(rados_create(&cluster, o.id.empty() ? nullptr : o.id.c_str()),
              "cannot create a RADOS client");
        cluster_.reset(cluster);
        // Before the file, so that ceph.conf may set it otherwise: librados's default is 300 s,
        // far too long for a daemon that should say soon that the cluster is not there.
        // Ceph's own log lines on stderr would bury the daemon's one-line reason; a failure
        // comes back as an error code, which the daemon words.
        check(rados_conf_set(cluster, "log_to_stderr", "false"), "log_to_stderr");
        check(rados_conf_set(cluster, "err_to_stderr", "false"), "err_to_stderr");
        const std::string timeout = std::to_string(o.mount_timeout);
        check(rados_conf_set(cluster, "client_mount_timeout", timeout.c_str()),
              "client_mount_timeout");
        check(rados_conf_read_file(cluster, o.conf.empty() ? nullptr : o.conf.c_str()),
              o.conf.empty() ? std::string("cannot read a ceph.conf")
                             : fmt::format("cannot read {}", o.conf));
        check(rados_conf_parse_env(cluster, nullptr), "CEPH_ARGS");
        check(rados_connect(cluster), "cannot connect to the Ceph cluster");
        rados_ioctx_t ioctx = nullptr;
        check(rados_ioctx_create(cluster, o.pool.c_str(), &ioctx),
              fmt::format("cannot open pool '{}'", o.pool));
        ioctx_.reset(ioctx);
        rbd_image_t image = nullptr;
        check(o.read_only ? rbd_open_read_only(ioctx, o.image.c_str(), &image, nullptr)
                          : rbd_open(ioctx, o.image.c_str(), &image, nullptr),
              fmt::format("cannot open image '{}/{}'", o.pool, o.image));
        image_.reset(image);
        check(rbd_get_size(image, &size_), "cannot read the image's size");
    }

    std::uint64_t size() const { return size_; }
    store_capabilities capabilities() const {
        // librbd has a write-back cache (rbd_cache) to flush; discard and write-zeroes are
        // native to every image format and feature set.
        return {.flush = true,
                .discard = !read_only_,
                .write_zeroes = !read_only_,
                .read_only = read_only_};
    }

    task<std::error_code> read(std::uint64_t off, std::span<std::byte> out) {
        co_return co_await aio([&](rbd_completion_t c) {
            return rbd_aio_read(image_.get(), off, out.size(), reinterpret_cast<char*>(out.data()),
                                c);
        });
    }
    task<std::error_code> write(std::uint64_t off, std::span<const std::byte> in) {
        co_return co_await aio([&](rbd_completion_t c) {
            return rbd_aio_write(image_.get(), off, in.size(),
                                 reinterpret_cast<const char*>(in.data()), c);
        });
    }
    task<std::error_code> flush() {
        co_return co_await aio([&](rbd_completion_t c) { return rbd_aio_flush(image_.get(), c); });
    }
    task<std::error_code> discard(std::uint64_t off, std::uint64_t len) {
        co_return co_await aio(
            [&](rbd_completion_t c) { return rbd_aio_discard(image_.get(), off, len, c); });
    }
    task<std::error_code> write_zeroes(std::uint64_t off, std::uint64_t len) {
        co_return co_await aio([&](rbd_completion_t c) {
            return rbd_aio_write_zeroes(image_.get(), off, len, c, 0, 0);
        });
    }

private:
    static void check(int r, const std::string& what) {
        if (r < 0)
            throw std::system_error(-r, std::generic_category(), what);
    }

    // librbd's thread: the result first, then the completion object goes (librbd keeps its
    // own reference until the callback returns), then the request resumes on its ring.
    static void on_complete(rbd_completion_t c, void* arg) {
        const ssize_t r = rbd_aio_get_return_value(c);
        rbd_aio_release(c);
        static_cast<remote_completion<ssize_t>*>(arg)->complete(r);
    }

    // Starts one operation with `start(completion)` and awaits its result.
    template <typename Start>
    task<std::error_code> aio(Start start) {
        remote_completion<ssize_t> done;
        rbd_completion_t c = nullptr;
        if (int r = rbd_aio_create_completion(&done, &on_complete, &c); r < 0)
            co_return std::error_code(-r, std::generic_category());
        // A refusal to start means the callback never comes: the completion is still ours.
        if (int r = start(c); r < 0) {
            rbd_aio_release(c);
            co_return std::error_code(-r, std::generic_category());
        }
        const ssize_t r = co_await done;
        co_return r < 0 ? std::error_code(static_cast<int>(-r), std::generic_category())
                        : std::error_code{};
    }

    // Each handle closes after those opened from it (members go in reverse order). Closing
    // the image flushes librbd's cache and drops its watch on the image header, so a clean
    // stop leaves no watcher behind (`rbd status`).
    struct shutdown_cluster {
        void operator()(void* c) const noexcept { rados_shutdown(c); }
    };
    struct destroy_ioctx {
        void operator()(void* io) const noexcept { rados_ioctx_destroy(io); }
    };
    struct close_image {
        void operator()(void* i) const noexcept { rbd_close(i); }
    };

    std::unique_ptr<void, shutdown_cluster> cluster_;
    std::unique_ptr<void, destroy_ioctx> ioctx_;
    std::unique_ptr<void, close_image> image_;
    std::uint64_t size_ = 0;
    bool read_only_ = false;
};

} // namespace dmuser::examples
