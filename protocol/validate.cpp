// Field rules of docs/events-and-functions.md, one small check per field kind (see validate.hpp).
#include "protocol/validate.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "protocol/msgpack_json.hpp"

namespace klynaa::protocol {

namespace {

using msgpack::object;

error_info field_error(error_code code, std::string path, std::string message) {
  return error_info{std::string{to_string(code)}, std::move(message), std::move(path), {}};
}

error_info invalid(const std::string& path, std::string_view expected, const object& got) {
  return field_error(error_code::invalid_field, path,
                     path + " must be " + std::string{expected} + ", got " + describe(got));
}

const object* find_key(const object& map, std::string_view key) {
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const auto& k = map.via.map.ptr[i].key;
    if (k.type == msgpack::type::STR && std::string_view(k.via.str.ptr, k.via.str.size) == key)
      return &map.via.map.ptr[i].val;
  }
  return nullptr;
}

bool is_int(const object& o) {
  return o.type == msgpack::type::POSITIVE_INTEGER || o.type == msgpack::type::NEGATIVE_INTEGER;
}

bool is_number(const object& o) {
  return is_int(o) || o.type == msgpack::type::FLOAT32 || o.type == msgpack::type::FLOAT64;
}

// The value of a number as a double (ints included); only call when is_number.
double number_of(const object& o) {
  switch (o.type) {
    case msgpack::type::POSITIVE_INTEGER: return static_cast<double>(o.via.u64);
    case msgpack::type::NEGATIVE_INTEGER: return static_cast<double>(o.via.i64);
    default: return o.via.f64;
  }
}

constexpr uint64_t max_int = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

bool condition_holds(const field_condition& c, const object& data) {
  const object* v = find_key(data, c.field);
  return v && v->type == msgpack::type::STR &&
         std::string_view(v->via.str.ptr, v->via.str.size) == c.equals;
}

bool required_here(const field_spec& spec, const object& data) {
  if (spec.except_when && condition_holds(*spec.except_when, data))
    return !spec.required;
  return spec.required;
}

std::string missing_message(std::string_view type_name, const field_spec& spec,
                            const std::string& path) {
  std::string m = path + " is missing; " + std::string{type_name} + " requires it";
  if (spec.except_when) {
    m += spec.required ? " unless " : " when ";
    m += std::string{spec.except_when->field} + " is " + std::string{spec.except_when->equals};
  }
  m += " (" + std::string{spec.help} + ")";
  return m;
}

std::string choices_text(const field_spec& spec) {
  std::string s;
  for (size_t i = 0; i < spec.choices.size(); ++i) {
    if (i > 0)
      s += i + 1 == spec.choices.size() ? " or " : ", ";
    s += std::string{spec.choices[i]};
  }
  return s;
}

std::optional<error_info> check_number(const field_spec& spec, const std::string& path,
                                       const object& v) {
  std::string_view expected;
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool exclusive_low = false;
  switch (spec.kind) {
    case field_kind::latitude:
      expected = "a number between -90 and 90";
      lo = -90;
      hi = 90;
      break;
    case field_kind::longitude:
      expected = "a number between -180 and 180";
      lo = -180;
      hi = 180;
      break;
    case field_kind::positive_number:
      expected = "a finite number greater than 0";
      lo = 0;
      exclusive_low = true;
      break;
    default:
      expected = "a finite number";
      break;
  }
  if (!is_number(v))
    return invalid(path, expected, v);
  const double d = number_of(v);
  if (!std::isfinite(d) || d < lo || d > hi || (exclusive_low && d <= lo))
    return invalid(path, expected, v);
  return std::nullopt;
}

std::optional<error_info> check_text(const field_spec& spec, const std::string& path,
                                     const object& v) {
  if (v.type != msgpack::type::STR) {
    if (spec.kind == field_kind::choice)
      return invalid(path, "one of " + choices_text(spec), v);
    if (spec.kind == field_kind::date)
      return invalid(path, "a date in the form YYYY-MM-DD", v);
    if (spec.kind == field_kind::monday)
      return invalid(path, "a Monday in the form YYYY-MM-DD", v);
    return invalid(path, "a string", v);
  }
  const std::string_view s(v.via.str.ptr, v.via.str.size);
  switch (spec.kind) {
    case field_kind::choice:
      for (auto c : spec.choices)
        if (c == s)
          return std::nullopt;
      return invalid(path, "one of " + choices_text(spec), v);
    case field_kind::date:
      if (!iso_weekday(s))
        return invalid(path, "a real date in the form YYYY-MM-DD", v);
      return std::nullopt;
    case field_kind::monday: {
      static const char* const names[] = {"", "Monday", "Tuesday", "Wednesday", "Thursday",
                                          "Friday", "Saturday", "Sunday"};
      const auto wd = iso_weekday(s);
      if (!wd)
        return invalid(path, "a Monday in the form YYYY-MM-DD", v);
      if (*wd != 1)
        return field_error(error_code::invalid_field, path,
                           path + " must be a Monday in the form YYYY-MM-DD, got " +
                               describe(v) + ", a " + names[*wd]);
      return std::nullopt;
    }
    default:
      if (!is_valid_utf8(s))
        return invalid(path, "valid UTF-8 text", v);
      return std::nullopt;
  }
}

std::optional<error_info> check_value(const field_spec& spec, const std::string& path,
                                      const object& v) {
  switch (spec.kind) {
    case field_kind::id:
      if (v.type != msgpack::type::POSITIVE_INTEGER || v.via.u64 == 0 || v.via.u64 > max_int)
        return invalid(path, "a positive integer", v);
      return std::nullopt;
    case field_kind::count:
      if (v.type != msgpack::type::POSITIVE_INTEGER || v.via.u64 > max_int)
        return invalid(path, "a non-negative integer", v);
      return std::nullopt;
    case field_kind::number:
    case field_kind::positive_number:
    case field_kind::latitude:
    case field_kind::longitude:
      return check_number(spec, path, v);
    case field_kind::boolean:
      if (v.type != msgpack::type::BOOLEAN)
        return invalid(path, "true or false", v);
      return std::nullopt;
    case field_kind::text:
    case field_kind::choice:
    case field_kind::date:
    case field_kind::monday:
      return check_text(spec, path, v);
  }
  return std::nullopt;
}

bool is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

}  // namespace

std::optional<int> iso_weekday(std::string_view s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-')
    return std::nullopt;
  int parts[3] = {0, 0, 0};
  const size_t starts[3] = {0, 5, 8};
  const size_t lens[3] = {4, 2, 2};
  for (int p = 0; p < 3; ++p)
    for (size_t i = 0; i < lens[p]; ++i) {
      const char c = s[starts[p] + i];
      if (c < '0' || c > '9')
        return std::nullopt;
      parts[p] = parts[p] * 10 + (c - '0');
    }
  const int y = parts[0], m = parts[1], d = parts[2];
  static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (y < 1 || m < 1 || m > 12 || d < 1)
    return std::nullopt;
  const int dim = month_days[m - 1] + (m == 2 && is_leap(y) ? 1 : 0);
  if (d > dim)
    return std::nullopt;
  const int64_t days = days_from_civil(y, static_cast<unsigned>(m), static_cast<unsigned>(d));
  // 1970-01-01 was a Thursday (ISO 4).
  const int64_t wd = ((days % 7) + 7 + 3) % 7;  // 0 = Monday
  return static_cast<int>(wd) + 1;
}

std::optional<error_info> validate_data(std::string_view type_name,
                                        const std::vector<field_spec>& fields,
                                        const msgpack::object& data) {
  if (data.type != msgpack::type::MAP)
    return invalid("data", "a map", data);
  for (const auto& spec : fields) {
    const std::string path = "data." + std::string{spec.name};
    const object* v = find_key(data, spec.name);
    if (!v || v->type == msgpack::type::NIL) {
      if (required_here(spec, data))
        return field_error(error_code::missing_field, path, missing_message(type_name, spec, path));
      continue;
    }
    if (auto err = check_value(spec, path, *v))
      return err;
  }
  return std::nullopt;
}

std::optional<error_info> validate_data(std::string_view type, const nlohmann::json& data) {
  const auto* fields = fields_of(type);
  if (!fields)
    return error_info{std::string{to_string(error_code::unknown_type)},
                      "unknown type " + quote(type) + "; see the list of events and functions",
                      "type",
                      {}};
  const std::string bytes = json_to_msgpack(data);
  msgpack::object_handle handle;
  if (unpack_frame(bytes.data(), bytes.size(), 64, handle) != unpack_status::ok)
    return error_info{std::string{to_string(error_code::invalid_field)},
                      "data nests too deeply", "data", {}};
  return validate_data(type, *fields, handle.get());
}

}  // namespace klynaa::protocol
