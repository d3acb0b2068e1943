# Run by `cmake --install` and by CPack (install(SCRIPT) in cmake/packaging.cmake):
# installs the files whose place depends on the prefix chosen at install time.
#   prefix /usr (the .deb):  /etc/klynaa/klynaa.toml, /lib/systemd/system/*.service
#   any other prefix P:      P/etc/klynaa/klynaa.toml, P/lib/systemd/system/*.service
# The units' ExecStart names P/bin/klynaa. file(INSTALL) adds $DESTDIR itself.
# KLYNAA_SOURCE_DIR, KLYNAA_BINARY_DIR and KLYNAA_EXAMPLE_CONFIG come from the
# install(CODE) in cmake/packaging.cmake.
if(NOT IS_ABSOLUTE "${CMAKE_INSTALL_PREFIX}")
  message(FATAL_ERROR "install prefix '${CMAKE_INSTALL_PREFIX}' is not an absolute path: "
                      "pass one, e.g. cmake --install build --prefix /opt/klynaa")
endif()
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(_etc "/etc/klynaa")
  set(_units "/lib/systemd/system")
else()
  set(_etc "${CMAKE_INSTALL_PREFIX}/etc/klynaa")
  set(_units "${CMAKE_INSTALL_PREFIX}/lib/systemd/system")
endif()
if(NOT EXISTS "${KLYNAA_EXAMPLE_CONFIG}")
  message(FATAL_ERROR "${KLYNAA_EXAMPLE_CONFIG} is missing: build the tree first "
                      "(scripts/build.sh release)")
endif()
# The config is installed once: an existing one holds the admin's settings (the
# Django API key among them) and is never overwritten; the new defaults are in
# share/doc/klynaa-jobs/klynaa.toml.example. (The .deb stages into an empty
# tree, so it always ships the file; dpkg keeps an edited one as a conffile.)
if(EXISTS "$ENV{DESTDIR}${_etc}/klynaa.toml")
  message(STATUS "Kept: $ENV{DESTDIR}${_etc}/klynaa.toml (exists; the example is in share/doc/klynaa-jobs)")
else()
  file(INSTALL DESTINATION "${_etc}" TYPE FILE PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES "${KLYNAA_EXAMPLE_CONFIG}")
endif()
file(INSTALL DESTINATION "${KLYNAA_DOC_DIR}" TYPE FILE RENAME klynaa.toml.example
     FILES "${KLYNAA_EXAMPLE_CONFIG}")
foreach(_unit klynaa-broker.service klynaa-node@.service)
  file(READ "${KLYNAA_SOURCE_DIR}/deploy/systemd/${_unit}" _text)
  string(REPLACE "/usr/bin/klynaa" "${CMAKE_INSTALL_PREFIX}/bin/klynaa" _text "${_text}")
  string(REPLACE "/etc/klynaa/" "${_etc}/" _text "${_text}")
  set(_staged "${KLYNAA_BINARY_DIR}/klynaa-units/${_unit}")
  file(WRITE "${_staged}" "${_text}")
  file(INSTALL DESTINATION "${_units}" TYPE FILE PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES "${_staged}")
endforeach()
