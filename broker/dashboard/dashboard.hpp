// The dashboard page (broker/dashboard/index.html), compiled into the binary:
// broker/CMakeLists.txt turns the file into a raw string literal at configure
// time (dashboard.cpp.in), and re-runs when the page changes.
#pragma once

#include <string_view>

namespace klynaa::broker {

/// The whole page: HTML with its CSS, JS and SVG inline; it fetches nothing but
/// the admin endpoint's own /stats and /dlq.
std::string_view dashboard_html();

}  // namespace klynaa::broker
