// Catch2's runner for the host test programs (tests/unit/, examples/tests/): the whole of
// Catch2 2.x's implementation, in one translation unit built once (meson.build).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
