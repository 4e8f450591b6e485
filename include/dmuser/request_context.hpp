// dmuser/request_context.hpp: what a store member may learn of the request it serves, and
// its thread's own state. Both are optional: a member that declares a leading
// `request_context<...>&` parameter gets it, one that does not is called as before.
//
//   struct my_store {
//       struct thread_state { connection conn; };          // one per server thread
//       thread_state open_thread(unsigned index);          // optional: how to make one
//       task<std::error_code> read(dmuser::request_context<thread_state>& ctx,
//                                  std::uint64_t offset, std::span<std::byte> out) {
//           if (ctx.has(DM_USER_REQ_MAP_FLAG_RAHEAD)) ...
//           co_return co_await ctx.state.conn.read(offset, out);
//       }
//       ...
//   };
//
// A store without `thread_state` takes `request_context<>&`. The state is made on its
// server thread before that thread reads a request (with open_thread(index) if the store
// has it, else default-constructed) and destroyed there after its last request: like
// nbdkit's per-connection handle, without thread_local, and one per store per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <type_traits>

namespace dmuser {

// The request's own fields, and the server's stop as it concerns this request.
struct request_info {
    std::uint64_t seq = 0;
    std::uint64_t type = 0;  // DM_USER_REQ_MAP_*
    std::uint64_t flags = 0; // DM_USER_REQ_MAP_FLAG_* (FUA, SYNC, META, RAHEAD, NOUNMAP...)
    unsigned thread = 0;     // the serving thread: 0 .. server_options::threads - 1

    bool has(std::uint64_t flag) const noexcept { return (flags & flag) != 0; }
    // True once the server stops: finish soon, or give up (an error is answered ERROR).
    bool stop_requested() const noexcept { return stopping_ && *stopping_; }
    // When the server gives up on what its store still holds, once a stop has begun
    // (server_options::stop_deadline); time_point::max() until then.
    std::chrono::steady_clock::time_point deadline() const noexcept {
        return deadline_ ? *deadline_ : std::chrono::steady_clock::time_point::max();
    }

    // For the server (and tests): where the serving thread keeps its stop state.
    const bool* stopping_ = nullptr;
    const std::chrono::steady_clock::time_point* deadline_ = nullptr;
};

template <typename State = void>
struct request_context : request_info {
    request_context(const request_info& info, State& s) noexcept : request_info(info), state(s) {}
    State& state; // the serving thread's own
};
template <>
struct request_context<void> : request_info {
    explicit request_context(const request_info& info = {}) noexcept : request_info(info) {}
};

template <typename S>
struct thread_state_of {
    using type = void;
};
template <typename S>
requires requires {
    typename S::thread_state;
}
struct thread_state_of<S> {
    using type = typename S::thread_state;
};
// The store's per-thread state type, or void.
template <typename S>
using thread_state_t = typename thread_state_of<S>::type;

// The context a store's members may take.
template <typename S>
using context_for = request_context<thread_state_t<S>>;

} // namespace dmuser
