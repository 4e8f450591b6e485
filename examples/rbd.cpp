// dmuser-rbd: a block device that is a Ceph RBD image, through librbd's asynchronous API
// (rbd_store.hpp): what rbd-nbd does, over dm-user instead of NBD.
#include "cli.hpp"
#include "daemon.hpp"
#include "rbd_store.hpp"

#include <fmt/format.h>
#include <string>

using namespace dmuser::examples;

namespace {

constexpr const char* usage = R"(usage: dmuser-rbd --name NAME [--pool POOL] [OPTIONS] --image IMAGE
       dmuser-rbd --name NAME [OPTIONS] POOL/IMAGE

Serves /dev/mapper/NAME from the RBD image IMAGE in POOL on a Ceph cluster, through librbd.
The image must exist (rbd create). A clean stop (SIGINT, SIGTERM) closes it, leaving no
watcher; after kill -9, --attach serves the same device again.

  --conf FILE        the cluster's ceph.conf (default: librados's search: $CEPH_CONF,
                     /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf)
  --id ID            the client's id, as in client.ID (default: librados's, admin)
  --pool POOL        the image's pool (default rbd)
  --image IMAGE      the image
  --read-only        open the image read-only; the device is read-only
  --mount-timeout S  give up reaching the monitors after S seconds (default 30)

)";

int run(int argc, char** argv) {
    DaemonOptions opt;
    rbd_options rbd;
    std::string spec;
    for (ArgWalker args(argc, argv); !args.done();) {
        if (args.flag("-h") || args.flag("--help")) {
            fmt::print("{}{}", usage, common_help);
            return 0;
        }
        if (auto v = args.value("--conf")) {
            rbd.conf = *v;
        } else if (auto v = args.value("--id")) {
            rbd.id = *v;
        } else if (auto v = args.value("--pool")) {
            rbd.pool = *v;
        } else if (auto v = args.value("--image")) {
            rbd.image = *v;
        } else if (auto v = args.value("--mount-timeout")) {
            auto n = parse_count(*v, 1, 3600);
            if (!n)
                throw std::invalid_argument(fmt::format(
                    "--mount-timeout '{}': expected a number of seconds from 1 to 3600", *v));
            rbd.mount_timeout = *n;
        } else if (args.flag("--read-only")) {
            rbd.read_only = true;
        } else if (parse_common_option(args, opt)) {
        } else if (args.current().starts_with("-") || !spec.empty()) {
            throw std::invalid_argument(
                fmt::format("unexpected argument '{}' (see --help)", args.current()));
        } else {
            spec = args.current();
            args.skip();
        }
    }
    if (!spec.empty()) {
        if (!rbd.image.empty())
            throw std::invalid_argument("give the image as POOL/IMAGE or --image, not both");
        const auto slash = spec.find('/');
        if (slash == std::string::npos || slash == 0 || slash + 1 == spec.size() ||
            spec.find('/', slash + 1) != std::string::npos)
            throw std::invalid_argument(
                fmt::format("'{}': expected POOL/IMAGE (see --help)", spec));
        rbd.pool = spec.substr(0, slash);
        rbd.image = spec.substr(slash + 1);
    }
    if (rbd.image.empty())
        throw std::invalid_argument("--image IMAGE (or POOL/IMAGE) is required (see --help)");
    if (rbd.pool.empty())
        throw std::invalid_argument("--pool must not be empty");
    if (opt.name.empty())
        throw std::invalid_argument("--name is required (see --help)");
    opt.read_only = rbd.read_only;
    rbd_store store(rbd);
    return run_daemon("dmuser-rbd", store, opt,
                      fmt::format("RBD image {}/{}", rbd.pool, rbd.image));
}

} // namespace

int main(int argc, char** argv) {
    return run_main("dmuser-rbd", run, argc, argv);
}
