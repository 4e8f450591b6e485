# find_package(dmuser): the header-only dm-user SDK as the imported target dmuser::dmuser,
# which brings its include paths, C++20 and what the headers link against (liburing, fmt,
# threads). Installed to <prefix>/share/cmake/dmuser/, so the prefix is three levels up.
include(CMakeFindDependencyMacro)
find_dependency(Threads)
find_dependency(fmt)
# liburing ships a pkg-config file and no CMake config.
find_dependency(PkgConfig)
pkg_check_modules(dmuser_liburing REQUIRED IMPORTED_TARGET liburing)

get_filename_component(_dmuser_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET dmuser::dmuser)
  add_library(dmuser::dmuser INTERFACE IMPORTED)
  set_target_properties(dmuser::dmuser PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_dmuser_prefix}/include;${_dmuser_prefix}/include/dmuser/uapi"
    INTERFACE_COMPILE_FEATURES cxx_std_20
    INTERFACE_LINK_LIBRARIES "PkgConfig::dmuser_liburing;fmt::fmt;Threads::Threads")
endif()
unset(_dmuser_prefix)
