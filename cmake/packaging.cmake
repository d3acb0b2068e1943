# install() rules and the Debian package (CPack), included by the top-level
# CMakeLists.txt after the klynaa target exists. docs/deployment.md, "Installing".
#
#   cmake --install build --prefix P    P/bin/klynaa, P/lib/systemd/system/*.service,
#                                       P/etc/klynaa/klynaa.toml, P/share/doc/klynaa-jobs/
#   (cd build && cpack -G DEB)          klynaa-jobs_VERSION_amd64.deb, prefix /usr: the
#                                       config in /etc/klynaa (a conffile), units in
#                                       /lib/systemd/system
include(GNUInstallDirs)

set(KLYNAA_EXAMPLE_CONFIG ${CMAKE_BINARY_DIR}/klynaa.toml)
add_custom_command(OUTPUT ${KLYNAA_EXAMPLE_CONFIG}
  COMMAND ${CMAKE_COMMAND} -DKLYNAA=$<TARGET_FILE:klynaa> -DOUT=${KLYNAA_EXAMPLE_CONFIG}
          -P ${PROJECT_SOURCE_DIR}/cmake/example_config.cmake
  DEPENDS klynaa ${PROJECT_SOURCE_DIR}/cmake/example_config.cmake
  COMMENT "klynaa.toml from klynaa config --example"
  VERBATIM)
add_custom_target(klynaa_example_config ALL DEPENDS ${KLYNAA_EXAMPLE_CONFIG})

set(KLYNAA_DOC_DIR ${CMAKE_INSTALL_DATADIR}/doc/klynaa-jobs)
install(TARGETS klynaa RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(CODE "
  set(KLYNAA_SOURCE_DIR \"${PROJECT_SOURCE_DIR}\")
  set(KLYNAA_BINARY_DIR \"${CMAKE_BINARY_DIR}\")
  set(KLYNAA_EXAMPLE_CONFIG \"${KLYNAA_EXAMPLE_CONFIG}\")
  set(KLYNAA_DOC_DIR \"\${CMAKE_INSTALL_PREFIX}/${KLYNAA_DOC_DIR}\")
  include(\"${PROJECT_SOURCE_DIR}/cmake/install_layout.cmake\")")
file(GLOB KLYNAA_DOCS ${PROJECT_SOURCE_DIR}/docs/*.md)
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${KLYNAA_DOCS}
              ${PROJECT_SOURCE_DIR}/deploy/systemd/klynaa.env.example
        DESTINATION ${KLYNAA_DOC_DIR})
install(FILES ${PROJECT_SOURCE_DIR}/deploy/debian/copyright DESTINATION ${KLYNAA_DOC_DIR})
# Debian policy: a changelog in the doc dir, gzip -9n (no name, no time stamp).
set(KLYNAA_CHANGELOG_GZ ${CMAKE_BINARY_DIR}/changelog.gz)
add_custom_command(OUTPUT ${KLYNAA_CHANGELOG_GZ}
  COMMAND gzip -9nc ${PROJECT_SOURCE_DIR}/deploy/debian/changelog > ${KLYNAA_CHANGELOG_GZ}
  DEPENDS ${PROJECT_SOURCE_DIR}/deploy/debian/changelog)
add_custom_target(klynaa_changelog ALL DEPENDS ${KLYNAA_CHANGELOG_GZ})
install(FILES ${KLYNAA_CHANGELOG_GZ} DESTINATION ${KLYNAA_DOC_DIR})

# --- the Debian package --------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME klynaa-jobs)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR Klynaa)
set(CPACK_PACKAGE_CONTACT "Klynaa Jobs maintainers <jobs@klynaa.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "durable background jobs for Klynaa's Django events")
set(CPACK_PACKAGE_DESCRIPTION "Klynaa Jobs takes events from Django over a ZeroMQ ingress,
commits them to disk before it acknowledges them, and runs their jobs on CAF
actor nodes: push notifications, escrow releases, nearby-worker searches and
scheduled reports, with retries, ordering per pickup and dead letters.
One binary plays every role: klynaa run, klynaa broker and klynaa node.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)          # klynaa-jobs_VERSION_ARCH.deb
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://klynaa.example/jobs")
# Depends from the binary's shared libraries (dpkg-shlibdeps: runtime packages,
# never -dev), plus what the maintainer scripts call.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/deploy/debian/conffiles
    ${PROJECT_SOURCE_DIR}/deploy/debian/postinst
    ${PROJECT_SOURCE_DIR}/deploy/debian/prerm
    ${PROJECT_SOURCE_DIR}/deploy/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# A package is made from the Release tree only: the sanitizer tree's binary
# would depend on libasan and libubsan and run several times slower.
if(KLYNAA_SANITIZE)
  file(WRITE ${CMAKE_BINARY_DIR}/cpack_refuse.cmake
    "message(FATAL_ERROR \"${CMAKE_BINARY_DIR} is the sanitizer tree: package the Release tree \"
     \"instead (bash scripts/build.sh release && cd build && cpack -G DEB)\")\n")
  set(CPACK_PROJECT_CONFIG_FILE ${CMAKE_BINARY_DIR}/cpack_refuse.cmake)
endif()
include(CPack)
