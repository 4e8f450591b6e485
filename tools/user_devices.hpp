// user_devices.hpp: what `dmuser` knows about the dm-user devices of this machine, read the way
// dmsetup reads it but through the SDK's DM ioctl code (dmuser/device.hpp): DM_LIST_DEVICES for
// the names, DM_TABLE_STATUS for each table line and status line.
#pragma once

#include "dmuser/device.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <dirent.h>
#include <optional>
#include <string>
#include <sys/stat.h>
#include <vector>

namespace dmuser::tools {

struct user_device {
    std::string name;    // /dev/mapper/NAME
    std::string control; // /dev/dm-user/CONTROL
    std::uint64_t sectors = 0;
    std::string table; // the target's table parameters, as `dmsetup table` prints them
    user_target_status status;
    std::vector<int> daemon_pids; // processes holding the control node open
};

// The device names in a DM_LIST_DEVICES answer: dm_name_list records, each `next` bytes after
// the last (0 ends the list), with the name at offsetof(name), not at sizeof: the struct is
// padded after its flexible array's start. A record or name running past the answer ends it.
inline std::vector<std::string> parse_name_list(dm::ioctl_buffer& buf) {
    constexpr std::size_t name_at = offsetof(dm_name_list, name);
    std::vector<std::string> names;
    const auto* base = static_cast<const unsigned char*>(buf.data());
    const std::size_t end = std::min<std::size_t>(buf.header().data_size, buf.size());
    std::size_t at = buf.header().data_start;
    while (at + name_at < end) {
        std::uint64_t dev = 0;
        std::uint32_t next = 0;
        std::memcpy(&dev, base + at + offsetof(dm_name_list, dev), sizeof dev);
        std::memcpy(&next, base + at + offsetof(dm_name_list, next), sizeof next);
        const char* name = reinterpret_cast<const char*>(base + at + name_at);
        const std::size_t len = strnlen(name, end - at - name_at);
        if (dev == 0 && len == 0) // the kernel's way of saying "no devices"
            break;
        if (at + name_at + len >= end) // no NUL inside the answer
            break;
        names.emplace_back(name, len);
        if (next == 0)
            break;
        at += next;
    }
    return names;
}

// The names of every device-mapper device (any target).
inline std::vector<std::string> dm_device_names(const dm::control& ctl) {
    dm::ioctl_buffer buf;
    if (int err = ctl.run(DM_LIST_DEVICES, buf))
        dm::fail(err, "DM_LIST_DEVICES failed");
    return parse_name_list(buf);
}

// The processes with `node` (a character device) open: the module does not say which daemon
// serves a target, so look where fuser(1) looks, in /proc/PID/fd.
inline std::vector<int> pids_holding(const std::string& node) {
    std::vector<int> pids;
    struct stat want {};
    if (::stat(node.c_str(), &want) != 0 || !S_ISCHR(want.st_mode))
        return pids;
    DIR* proc = ::opendir("/proc");
    if (!proc)
        return pids;
    while (const dirent* p = ::readdir(proc)) {
        const int pid = std::atoi(p->d_name);
        if (pid <= 0)
            continue;
        const std::string fd_dir = fmt::format("/proc/{}/fd", pid);
        DIR* fds = ::opendir(fd_dir.c_str());
        if (!fds)
            continue; // gone, or not ours to see
        while (const dirent* f = ::readdir(fds)) {
            struct stat st {};
            if (f->d_name[0] != '.' &&
                ::stat(fmt::format("{}/{}", fd_dir, f->d_name).c_str(), &st) == 0 &&
                S_ISCHR(st.st_mode) && st.st_rdev == want.st_rdev) {
                pids.push_back(pid);
                break;
            }
        }
        ::closedir(fds);
    }
    ::closedir(proc);
    std::sort(pids.begin(), pids.end());
    return pids;
}

// Device `name` if it is a dm-user device (one `user` target), else nullopt.
inline std::optional<user_device> read_user_device(const dm::control& ctl,
                                                   const std::string& name) {
    dm::ioctl_buffer buf(name);
    buf.header().flags = DM_STATUS_TABLE_FLAG;
    if (int err = ctl.run(DM_TABLE_STATUS, buf)) {
        if (err == ENXIO)
            return std::nullopt; // removed meanwhile
        dm::fail(err, fmt::format("cannot read the table of '{}'", name));
    }
    auto table = buf.targets();
    if (!table || table->size() != 1 || (*table)[0].type != user_target_type)
        return std::nullopt;
    user_device d;
    d.name = name;
    d.sectors = (*table)[0].length;
    d.table = (*table)[0].params;
    // "<start> <length> <control> [<#opts> <opt>...]"
    const auto words = user_target_status::parse(d.table).words;
    d.control = words.size() >= 3 ? words[2] : std::string{};

    buf.reset(dm::ioctl_buffer::default_data_size);
    if (int err = ctl.run(DM_TABLE_STATUS, buf)) {
        if (err == ENXIO)
            return std::nullopt;
        dm::fail(err, fmt::format("cannot read the status of '{}'", name));
    }
    auto status = buf.targets();
    if (status && status->size() == 1)
        d.status = user_target_status::parse((*status)[0].params);
    if (!d.control.empty())
        d.daemon_pids = pids_holding("/dev/dm-user/" + d.control);
    return d;
}

inline std::vector<user_device> list_user_devices(const dm::control& ctl) {
    std::vector<user_device> out;
    for (const auto& name : dm_device_names(ctl))
        if (auto d = read_user_device(ctl, name))
            out.push_back(std::move(*d));
    return out;
}

} // namespace dmuser::tools
