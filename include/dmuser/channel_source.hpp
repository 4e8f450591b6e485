// dmuser/channel_source.hpp: where the server gets its channels and learns which module
// it talks to. device_channels opens /dev/dm-user/NAME; testing::fake_kernel supplies
// socketpairs instead, so the same server runs against either.
#pragma once

#include "dmuser/unique_fd.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <fcntl.h>
#include <linux/dm-user.h>
#include <optional>
#include <string>
#include <sys/ioctl.h>
#include <system_error>

namespace dmuser {

// What the server needs to know about the module behind a channel.
struct module_info {
    // Part 2 (this project's module). False: Android's Part 1 module, which speaks
    // header-then-payload, one request at a time, with no ioctls.
    bool extensions = false;
    dm_user_info info{}; // valid when extensions

    bool has_feature(std::uint64_t f) const noexcept { return extensions && (info.features & f); }
    bool has_op(std::uint64_t o) const noexcept { return extensions && (info.ops & o); }
};

class channel_source {
public:
    virtual ~channel_source() = default;
    // One more channel (an open of the control device). Throws std::system_error.
    virtual unique_fd open_channel() = 0;
    // DM_USER_IOC_GET_INFO on a channel: Part 2 info, or extensions=false when the module
    // answers ENOTTY or EOPNOTSUPP (Android's, the RFC's). Any other failure throws
    // std::system_error.
    virtual module_info query(int channel_fd) = 0;
    // DM_USER_IOC_SET_CHANNEL_FLAGS.
    virtual std::error_code set_channel_flags(int channel_fd, std::uint64_t flags) = 0;
    // For messages: "/dev/dm-user/NAME".
    virtual std::string describe() const = 0;
    // For testing::fake_kernel: an error the next response write on this channel fails
    // with instead of reaching it (the module's EBUSY), or none. A real module needs no
    // such hook: its writes fail on their own.
    virtual std::error_code refuse_response(int /*channel_fd*/) { return {}; }
    // The size of the daemon's reads that take a new request, said before it opens a
    // channel. The module needs nothing: it hands a message longer than a read in pieces,
    // the rest with the channel's next read. testing::fake_kernel's datagram channels
    // cannot keep a rest, so it cuts such messages where the module would.
    virtual void reads_of(std::size_t /*bytes*/) {}
};

// Whether DM_USER_IOC_GET_INFO failing with `err` means a module without the ioctl
// (Part 1) rather than a failure.
inline bool get_info_means_part1(int err) noexcept {
    // Android's module has no ioctls (ENOTTY); the 2020 RFC's variant answers EOPNOTSUPP.
    return err == ENOTTY || err == EOPNOTSUPP;
}

class device_channels final : public channel_source {
public:
    // name: the control name of the table line, or a full path.
    explicit device_channels(std::string name)
        : path_(name.find('/') == std::string::npos ? "/dev/dm-user/" + name : name) {}

    unique_fd open_channel() override {
        int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0)
            throw std::system_error(errno, std::system_category(), "open " + path_);
        return unique_fd(fd);
    }
    module_info query(int fd) override {
        module_info m;
        if (::ioctl(fd, DM_USER_IOC_GET_INFO, &m.info) == 0) {
            m.extensions = true;
            return m;
        }
        if (get_info_means_part1(errno)) {
            m.info = {};
            return m;
        }
        throw std::system_error(errno, std::system_category(), "DM_USER_IOC_GET_INFO " + path_);
    }
    std::error_code set_channel_flags(int fd, std::uint64_t flags) override {
        __u64 f = flags;
        if (::ioctl(fd, DM_USER_IOC_SET_CHANNEL_FLAGS, &f) == 0)
            return {};
        return std::error_code(errno, std::system_category());
    }
    std::string describe() const override { return path_; }

private:
    std::string path_;
};

} // namespace dmuser
