// dmuser/dmuser.hpp: the whole SDK. See README.md in this folder.
#pragma once

#include "dmuser/block_store.hpp"
#include "dmuser/channel_source.hpp"
#include "dmuser/device.hpp"
#include "dmuser/dispatch.hpp"
#include "dmuser/file_io.hpp"
#include "dmuser/frame_allocator.hpp"
#include "dmuser/log.hpp"
#include "dmuser/protocol.hpp"
#include "dmuser/ring.hpp"
#include "dmuser/server.hpp"
#include "dmuser/spawn.hpp"
#include "dmuser/stats.hpp"
#include "dmuser/task.hpp"
#include "dmuser/unique_fd.hpp"
