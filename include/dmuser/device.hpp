// dmuser/device.hpp: create and remove a dm-user device through /dev/mapper/control, the way
// dmsetup does but with nothing to install: DM_DEV_CREATE, DM_TABLE_LOAD with the `user` target,
// resume, and a /dev/mapper/NAME node made by hand (there may be no udev to make it).
//
// Failures throw std::system_error: code() is the errno-style std::error_code, what() one
// sentence that says what was being done and to which device.
#pragma once

#include "device_ioctl.hpp"
#include "device_table.hpp"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <utility>

namespace dmuser {

inline constexpr const char* dm_control_path = "/dev/mapper/control";

namespace dm {

[[noreturn]] inline void fail(int err, const std::string& what) {
    throw std::system_error(std::error_code(err, std::generic_category()), what);
}

// An open /dev/mapper/control.
class control {
public:
    control() {
        fd_ = ::open(dm_control_path, O_RDWR | O_CLOEXEC);
        if (fd_ < 0) {
            const int err = errno;
            if (err == ENOENT || err == ENODEV || err == ENXIO)
                fail(err, fmt::format("device-mapper is not available ({} is missing): load "
                                      "dm-mod, then the dm-user module",
                                      dm_control_path));
            fail(err, fmt::format("cannot open {}", dm_control_path));
        }
    }
    control(const control&) = delete;
    control& operator=(const control&) = delete;
    ~control() { ::close(fd_); }

    // One ioctl; a reply that did not fit is asked for again with a larger buffer.
    // Returns 0 or the errno.
    int run(unsigned long request, ioctl_buffer& buf) const {
        const std::uint32_t flags_in = buf.header().flags;
        for (int tries = 0;; ++tries) {
            if (::ioctl(fd_, request, buf.data()) < 0)
                return errno;
            if (!buf.buffer_full() || tries == 8)
                return 0;
            buf.grow();
            buf.header().flags = flags_in;
        }
    }

private:
    int fd_ = -1;
};

inline std::vector<target_version> list_versions(const control& ctl) {
    ioctl_buffer buf;
    if (int err = ctl.run(DM_LIST_VERSIONS, buf))
        fail(err, "DM_LIST_VERSIONS failed");
    auto versions = buf.versions();
    if (!versions)
        fail(EPROTO, "DM_LIST_VERSIONS returned a malformed list");
    return *versions;
}

inline std::optional<target_version> find_target(const control& ctl, std::string_view type) {
    for (auto& v : list_versions(ctl))
        if (v.name == type)
            return v;
    return std::nullopt;
}

} // namespace dm

// The `user` target's version, or nullopt when device-mapper has no such target (the dm-user
// module is not loaded). Throws when device-mapper itself is unavailable.
inline std::optional<dm::target_version> user_target_version() {
    return dm::find_target(dm::control{}, user_target_type);
}

// One dm-user device. Owning: the destructor removes the device (and its node) unless release()d.
class device {
public:
    static device create(const user_table& table) {
        if (auto why = user_table_problem(table))
            dm::fail(EINVAL, *why);
        device dev;
        dev.table_ = table;
        auto version = dm::find_target(*dev.ctl_, user_target_type);
        if (!version)
            dm::fail(ENODEV, "the dm-user module is not loaded (device-mapper has no 'user' "
                             "target)");
        dev.version_ = *version;

        dm::ioctl_buffer buf(table.name);
        if (int err = dev.ctl_->run(DM_DEV_CREATE, buf)) {
            if (err == EBUSY) // what DM says for a name it has: not "busy" to a reader
                dm::fail(EEXIST, fmt::format("device name '{}' is already in use", table.name));
            dm::fail(err, fmt::format("cannot create device '{}'", table.name));
        }
        dev.owned_ = true; // from here on, a failure removes what was made
        dev.devno_ = static_cast<dev_t>(buf.header().dev);

        buf.reset(dm::ioctl_buffer::default_data_size);
        if (table.read_only)
            buf.header().flags |= DM_READONLY_FLAG;
        buf.add_target(0, table.sectors, user_target_type, table.params(version->major));
        if (int err = dev.ctl_->run(DM_TABLE_LOAD, buf))
            dm::fail(err,
                     fmt::format("the module refused the table '{}' for '{}' (the kernel "
                                 "log says why; is /dev/dm-user/{} taken?)",
                                 table.line(version->major), table.name, table.control_name()));

        buf.reset(dm::ioctl_buffer::default_data_size);
        if (int err = dev.ctl_->run(DM_DEV_SUSPEND, buf)) // no DM_SUSPEND_FLAG: resume
            dm::fail(err, fmt::format("cannot resume '{}'", table.name));
        dev.devno_ = static_cast<dev_t>(buf.header().dev);
        dev.make_node();
        return dev;
    }

    // Takes charge of an existing dm-user device `table.name` (after a daemon was killed, say):
    // its table must be the `user` target with table.control_name() and table.sectors. The
    // handle then owns it, and makes the /dev/mapper node if it is missing.
    static device adopt(const user_table& table) {
        if (auto why = user_table_problem(table))
            dm::fail(EINVAL, *why);
        device dev;
        dev.table_ = table;
        if (auto version = dm::find_target(*dev.ctl_, user_target_type))
            dev.version_ = *version;
        else
            dm::fail(ENODEV, "the dm-user module is not loaded (device-mapper has no 'user' "
                             "target)");
        dm::ioctl_buffer buf(table.name);
        buf.header().flags = DM_STATUS_TABLE_FLAG;
        if (int err = dev.ctl_->run(DM_TABLE_STATUS, buf))
            dm::fail(err, err == ENXIO ? fmt::format("there is no device '{}'", table.name)
                                       : fmt::format("cannot read the table of '{}'", table.name));
        if (!(buf.header().flags & DM_ACTIVE_PRESENT_FLAG))
            dm::fail(ENXIO, fmt::format("device '{}' has no active table", table.name));
        auto targets = buf.targets();
        if (!targets || targets->size() != 1 || (*targets)[0].type != user_target_type ||
            (*targets)[0].length != table.sectors)
            dm::fail(EINVAL, fmt::format("device '{}' is not a dm-user device of {} sectors",
                                         table.name, table.sectors));
        if (auto why = user_adoption_problem(table, (*targets)[0].params))
            dm::fail(EINVAL, *why);
        dev.devno_ = static_cast<dev_t>(buf.header().dev);
        dev.owned_ = true;
        dev.make_node();
        return dev;
    }

    device(device&& o) noexcept { *this = std::move(o); }
    device& operator=(device&& o) noexcept {
        if (this != &o) {
            (void)remove();
            ctl_ = std::move(o.ctl_);
            table_ = std::move(o.table_);
            version_ = std::move(o.version_);
            devno_ = o.devno_;
            owned_ = std::exchange(o.owned_, false);
        }
        return *this;
    }
    ~device() { (void)remove(); }

    const std::string& name() const { return table_.name; }
    std::string path() const { return fmt::format("/dev/{}/{}", DM_DIR, table_.name); }
    std::string control_path() const {
        return fmt::format("/dev/dm-user/{}", table_.control_name());
    }
    std::uint64_t size_bytes() const { return table_.sectors * 512; }
    const user_table& table() const { return table_; }
    dev_t devno() const { return devno_; }
    const dm::target_version& target_version() const { return version_; }

    // The target's raw status line (`dmsetup status` after "0 <len> user ").
    std::string status_line() const {
        dm::ioctl_buffer buf(table_.name);
        if (int err = ctl_->run(DM_TABLE_STATUS, buf))
            dm::fail(err, fmt::format("cannot read the status of '{}'", table_.name));
        auto targets = buf.targets();
        if (!targets || targets->size() != 1)
            dm::fail(EPROTO, fmt::format("status of '{}': unexpected answer", table_.name));
        return (*targets)[0].params;
    }
    user_target_status status() const { return user_target_status::parse(status_line()); }

    // Removes the device and its node; an open device (EBUSY) is retried for up to `patience`.
    // Returns the errno-style code of the last failure; the handle stays owning on failure so a
    // later call can try again. Out of memory (the ioctl buffer, the node's path) is ENOMEM,
    // not std::terminate: the destructor calls this.
    std::error_code remove(std::chrono::milliseconds patience = std::chrono::seconds(2)) noexcept {
        if (!owned_)
            return {};
        try {
            const auto deadline = std::chrono::steady_clock::now() + patience;
            int err = 0;
            for (;;) {
                dm::ioctl_buffer buf(table_.name);
                err = ctl_->run(DM_DEV_REMOVE, buf);
                if (err != EBUSY || std::chrono::steady_clock::now() >= deadline)
                    break;
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
            if (err != 0 && err != ENXIO) // ENXIO: someone else removed it already
                return std::error_code(err, std::generic_category());
            owned_ = false;
            remove_node();
            return {};
        } catch (const std::bad_alloc&) {
            return std::make_error_code(std::errc::not_enough_memory);
        }
    }

    // Keep the device after this handle goes away.
    void release() noexcept { owned_ = false; }

private:
    device() : ctl_(std::make_unique<dm::control>()) {}

    // /dev/mapper/NAME: what udev would make. A stale node of that name is replaced.
    void make_node() {
        const auto p = path();
        struct stat st {};
        if (::lstat(p.c_str(), &st) == 0) {
            if (S_ISBLK(st.st_mode) && st.st_rdev == devno_)
                return; // udev was faster
            ::unlink(p.c_str());
        }
        if (::mknod(p.c_str(), S_IFBLK | 0600, devno_) < 0) {
            const int err = errno;
            dm::fail(err, fmt::format("cannot make {} ({}:{})", p, major(devno_), minor(devno_)));
        }
    }

    void remove_node() {
        const auto p = path();
        struct stat st {};
        if (::lstat(p.c_str(), &st) == 0 && S_ISBLK(st.st_mode) && st.st_rdev == devno_)
            ::unlink(p.c_str());
    }

    std::unique_ptr<dm::control> ctl_;
    user_table table_;
    dm::target_version version_;
    dev_t devno_ = 0;
    bool owned_ = false;
};

} // namespace dmuser
