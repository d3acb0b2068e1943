// Geohash cells and great-circle distance, checked against published values
// (the geohash.org example u4pruydqqvj, Wikipedia's ezs42) and hand-computed
// ones.
#include "actors/geohash.hpp"

#include <catch2/catch.hpp>

namespace geohash = klynaa::actors::geohash;
using Catch::Detail::Approx;

TEST_CASE("geohash: known points encode to their published hashes", "[scheduler]") {
  CHECK(geohash::encode(57.64911, 10.40744, 11) == "u4pruydqqvj");
  CHECK(geohash::encode(57.64911, 10.40744, 5) == "u4pru");
  CHECK(geohash::encode(42.6049, -5.6030, 5) == "ezs42");
  CHECK(geohash::encode(6.5244, 3.3792, 5) == "s14mh");  // Lagos
  CHECK(geohash::encode(0.0, 0.0, 5) == "s0000");
  CHECK(geohash::encode(-0.0001, -0.0001, 5) == "7zzzz");
  CHECK(geohash::encode(-90, -180, 5) == "00000");
  CHECK(geohash::encode(90, 180, 5) == "zzzzz");
  // Precision is clamped to 1..12.
  CHECK(geohash::encode(57.64911, 10.40744, 0) == "u");
  CHECK(geohash::encode(57.64911, 10.40744, 20).size() == 12);
}

TEST_CASE("geohash: a hash decodes to its cell's centre and size", "[scheduler]") {
  auto s = geohash::decode("s0000");
  REQUIRE(s);
  CHECK(s->lat == 0.02197265625);  // exact: the bisections are powers of two
  CHECK(s->lng == 0.02197265625);
  CHECK(s->lat_error == 0.02197265625);
  CHECK(s->lng_error == 0.02197265625);

  auto e = geohash::decode("ezs42");
  REQUIRE(e);
  CHECK(e->lat == 42.60498046875);
  CHECK(e->lng == -5.60302734375);

  auto u = geohash::decode("U4PRU");  // case-insensitive
  REQUIRE(u);
  CHECK(u->lat == 57.63427734375);
  CHECK(u->lng == 10.39306640625);

  auto whole = geohash::decode("u4pruydqqvj");
  REQUIRE(whole);
  CHECK(whole->lat == Approx(57.64911).margin(whole->lat_error));
  CHECK(whole->lng == Approx(10.40744).margin(whole->lng_error));
}

TEST_CASE("geohash: decoding refuses what is not a geohash", "[scheduler]") {
  CHECK_FALSE(geohash::decode(""));
  CHECK_FALSE(geohash::decode("abc"));    // 'a' is not in the alphabet
  CHECK_FALSE(geohash::decode("s000i"));  // nor are i, l, o
  CHECK_FALSE(geohash::decode("s000l"));
  CHECK_FALSE(geohash::decode("s000o"));
  CHECK_FALSE(geohash::decode("s0000 "));
  CHECK_FALSE(geohash::decode("0123456789bcd"));  // 13 characters
}

TEST_CASE("geohash: every cell's centre encodes back to the cell", "[scheduler]") {
  for (const char* h : {"s0000", "ezs42", "u4pru", "s14mh", "00000", "zzzzz", "7zzzz", "dr5ru"}) {
    auto c = geohash::decode(h);
    REQUIRE(c);
    CHECK(geohash::encode(c->lat, c->lng, 5) == h);
  }
}

TEST_CASE("geohash: great-circle distances use R = 6371.0088 km", "[scheduler]") {
  CHECK(geohash::great_circle_km(0, 0, 0, 1) == Approx(111.1950802335329).epsilon(1e-12));
  CHECK(geohash::great_circle_km(0, 0, 1, 0) == Approx(111.1950802335329).epsilon(1e-12));
  CHECK(geohash::great_circle_km(6.5244, 3.3792, 6.5244, 3.3792) == 0.0);
  // Lagos to the centre of its geohash-5 cell s14mh.
  CHECK(geohash::great_circle_km(6.5244, 3.3792, 6.52587890625, 3.36181640625) ==
        Approx(1.9274764002666547).epsilon(1e-9));
  // Antipodes: half the circumference.
  CHECK(geohash::great_circle_km(0, 0, 0, 180) == Approx(6371.0088 * 3.14159265358979323846));
}
