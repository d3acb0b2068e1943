// Geohash encoding and decoding by interval bisection; see geohash.hpp.
#include "actors/geohash.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace klynaa::actors {
namespace geohash {
namespace {

constexpr char alphabet[] = "0123456789bcdefghjkmnpqrstuvwxyz";

int value_of(char c) {
  c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (int i = 0; i < 32; ++i)
    if (alphabet[i] == c) return i;
  return -1;
}

}  // namespace

std::string encode(double lat, double lng, int precision) {
  precision = std::clamp(precision, 1, 12);
  lat = std::clamp(lat, -90.0, 90.0);
  lng = std::clamp(lng, -180.0, 180.0);
  double lat_lo = -90, lat_hi = 90, lng_lo = -180, lng_hi = 180;
  bool lng_bit = true;  // bits alternate, longitude first
  std::string out;
  out.reserve(static_cast<size_t>(precision));
  while (static_cast<int>(out.size()) < precision) {
    int v = 0;
    for (int b = 0; b < 5; ++b, lng_bit = !lng_bit) {
      double& lo = lng_bit ? lng_lo : lat_lo;
      double& hi = lng_bit ? lng_hi : lat_hi;
      double x = lng_bit ? lng : lat;
      double mid = (lo + hi) / 2;
      v <<= 1;
      if (x >= mid) {
        v |= 1;
        lo = mid;
      } else {
        hi = mid;
      }
    }
    out.push_back(alphabet[v]);
  }
  return out;
}

std::optional<cell> decode(std::string_view hash) {
  if (hash.empty() || hash.size() > 12) return std::nullopt;
  double lat_lo = -90, lat_hi = 90, lng_lo = -180, lng_hi = 180;
  bool lng_bit = true;
  for (char c : hash) {
    int v = value_of(c);
    if (v < 0) return std::nullopt;
    for (int b = 4; b >= 0; --b, lng_bit = !lng_bit) {
      double& lo = lng_bit ? lng_lo : lat_lo;
      double& hi = lng_bit ? lng_hi : lat_hi;
      double mid = (lo + hi) / 2;
      if ((v >> b) & 1)
        lo = mid;
      else
        hi = mid;
    }
  }
  cell c;
  c.lat = (lat_lo + lat_hi) / 2;
  c.lng = (lng_lo + lng_hi) / 2;
  c.lat_error = (lat_hi - lat_lo) / 2;
  c.lng_error = (lng_hi - lng_lo) / 2;
  return c;
}

double great_circle_km(double lat1, double lng1, double lat2, double lng2) {
  constexpr double rad = 3.14159265358979323846 / 180.0;
  const double p1 = lat1 * rad, p2 = lat2 * rad;
  const double dp = (lat2 - lat1) * rad, dl = (lng2 - lng1) * rad;
  const double h = std::sin(dp / 2) * std::sin(dp / 2) +
                   std::cos(p1) * std::cos(p2) * std::sin(dl / 2) * std::sin(dl / 2);
  return 2 * earth_radius_km * std::asin(std::min(1.0, std::sqrt(h)));
}

}  // namespace geohash
}  // namespace klynaa::actors
