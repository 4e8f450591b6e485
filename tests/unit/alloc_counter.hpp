// Counts the calling thread's heap allocations through operator new (alloc_counter.cpp
// replaces it for the whole test program), so a test can check that a path allocates
// nothing.
#pragma once

#include <cstddef>

namespace test {

// operator new calls made by this thread so far.
std::size_t allocations_on_this_thread() noexcept;

} // namespace test
