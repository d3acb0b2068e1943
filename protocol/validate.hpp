// Validation of a request's `data` against the table in schema.hpp (docs/events-and-functions.md):
// the field rules, checked in the table's order, first failure wins. The ingress
// codec (codec.cpp) calls the msgpack form on the frame as it arrived, so an
// integer sent as a float (7.0) is told apart; the CLI can call the JSON form to
// check `--data` before sending. No I/O, no shared state: thread-safe.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include "protocol/message.hpp"
#include "protocol/schema.hpp"

namespace klynaa::protocol {

/// Checks `data` (must be a msgpack map; anything else is an invalid_field "data")
/// against `fields` of type `type_name` (used in messages), in order. Returns the
/// first failure — code "missing_field" (absent or nil while required) or
/// "invalid_field", `field` "data.<name>", and a sentence saying what is expected
/// and what arrived — or nullopt when every field passes. Fields not in the table
/// are not looked at. Never throws except bad_alloc.
std::optional<error_info> validate_data(std::string_view type_name,
                                        const std::vector<field_spec>& fields,
                                        const msgpack::object& data);

/// The same rules for JSON data of event type or function `type` (packed to msgpack
/// first, so JSON 7.0 is a float and not an id). An unknown `type` is an
/// "unknown_type" failure. Never throws except bad_alloc.
std::optional<error_info> validate_data(std::string_view type, const nlohmann::json& data);

/// ISO day of the week (1 = Monday ... 7 = Sunday) of a `YYYY-MM-DD` date, or
/// nullopt when `s` is not exactly that form or not a real calendar date
/// (years 0001-9999; 2024-02-29 is real, 2023-02-29 is not).
std::optional<int> iso_weekday(std::string_view s);

}  // namespace klynaa::protocol
