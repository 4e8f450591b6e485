// dmuser/detail/server_impl.hpp: the member functions of dmuser::server (server.hpp), by
// concern: its life (threads, rings, stop), how requests are read, how they are answered.
#pragma once

#include "dmuser/detail/server_lifecycle.hpp"
#include "dmuser/detail/server_reads.hpp"
#include "dmuser/detail/server_responses.hpp"
