// dmuser-nbd: a block device that is an NBD server's export: nbdkit, qemu-nbd, nbd-server, a
// remote machine. The client is libnbd, asynchronous, on the server threads' own io_urings
// (nbd_store.hpp).
#include "cli.hpp"
#include "daemon.hpp"
#include "nbd_store.hpp"

#include <fmt/format.h>
#include <string>

using namespace dmuser::examples;

namespace {

constexpr const char* usage = R"(usage: dmuser-nbd --name NAME [--reconnect] [OPTIONS] URI

Serves /dev/mapper/NAME from the export at URI, e.g. nbd://host:10809/export or
nbd+unix:///?socket=/run/nbd.sock. Each server thread opens a connection of its own;
with more than one thread the server must allow several (NBD multi-conn).

  URI                the NBD export
  --reconnect        when the server goes away, fail the requests in flight, then connect
                     again for the next one (default: fail every request until stopped)

)";

int run(int argc, char** argv) {
    DaemonOptions opt;
    nbd_options nbd;
    for (ArgWalker args(argc, argv); !args.done();) {
        if (args.flag("-h") || args.flag("--help")) {
            fmt::print("{}{}", usage, common_help);
            return 0;
        }
        if (args.flag("--reconnect")) {
            nbd.reconnect = true;
        } else if (parse_common_option(args, opt)) {
        } else if (args.current().starts_with("-") || !nbd.uri.empty()) {
            throw std::invalid_argument(
                fmt::format("unexpected argument '{}' (see --help)", args.current()));
        } else {
            nbd.uri = args.current();
            args.skip();
        }
    }
    if (nbd.uri.empty())
        throw std::invalid_argument("URI is required (see --help)");
    const std::string uri = nbd.uri;
    nbd_store store(std::move(nbd));
    if (opt.threads > 1 && !store.multi_conn())
        throw std::invalid_argument(fmt::format(
            "{} does not allow several connections (multi-conn): use --threads 1", uri));
    return run_daemon("dmuser-nbd", store, opt, uri);
}

} // namespace

int main(int argc, char** argv) {
    return run_main("dmuser-nbd", run, argc, argv);
}
