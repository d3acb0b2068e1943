// Geohash (base-32, Niemeyer 2008) cells and great-circle distance, for the
// weekly analytics' service areas (docs/events-and-functions.md, "generateDailyReport,
// generateWeeklyAnalytics, cleanupData (scheduler)"). Pure
// functions: thread-safe, no allocation beyond the returned string, never throw
// except bad_alloc.
//
// A geohash of n characters names a cell of the lat/lng grid; 5 characters is
// about 4.9 km × 4.9 km at the equator. Longitude bits come first, alternating
// with latitude bits; each half-open interval keeps its lower bound, so a point
// exactly on a cell border belongs to the cell north/east of it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace klynaa::actors::geohash {

/// The geohash of (lat, lng) with `precision` characters (clamped to 1..12).
/// lat must be in [-90, 90] and lng in [-180, 180] (values outside are clamped).
/// Example: encode(57.64911, 10.40744, 5) == "u4pru".
std::string encode(double lat, double lng, int precision);

/// A cell: its centre and half its height and width, in degrees.
struct cell {
  double lat = 0;
  double lng = 0;
  double lat_error = 0;
  double lng_error = 0;
};

/// The cell `hash` names (case-insensitive), or nullopt when it is empty, longer
/// than 12 characters or has a character outside the geohash alphabet
/// (0-9 and b-z without i, l, o).
/// Example: decode("ezs42") has its centre at (42.60498046875, -5.60302734375).
std::optional<cell> decode(std::string_view hash);

/// Earth's mean radius in km, the one of every distance (docs/events-and-functions.md,
/// "notifyNearbyWorkers and updateWorkerLocation (geo)": haversine, R = 6371.0088 km).
constexpr double earth_radius_km = 6371.0088;

/// Great-circle distance in km between two points given in degrees (haversine
/// with earth_radius_km).
/// (Kept in this namespace so it cannot clash with the geo actor's helpers.)
double great_circle_km(double lat1, double lng1, double lat2, double lng2);

}  // namespace klynaa::actors::geohash
