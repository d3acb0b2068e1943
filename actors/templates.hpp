// Title and body of each push, per notification_type (docs/events-and-functions.md,
// "sendPickupNotification": a documented template per notification_type,
// overridable in config).
//
// The defaults:
//
// | notification_type | title                | body                                                             |
// |-------------------|----------------------|------------------------------------------------------------------|
// | pickup_requested  | New pickup nearby    | Pickup #{pickup_id} is waiting for a worker near you.            |
// | pickup_accepted   | Pickup accepted      | A worker accepted your pickup #{pickup_id}.                      |
// | pickup_delivered  | Pickup delivered     | Your pickup #{pickup_id} was delivered. Please confirm it.       |
// | escrow_released   | Payment released     | {amount} {currency} for pickup #{pickup_id} has been released to you. |
// | pickup_disputed   | Pickup disputed      | Pickup #{pickup_id} was disputed: {reason}                       |
// | daily_report      | Daily report ready   | Daily report #{report_id} is ready.                              |
//
// Placeholders: {pickup_id}, {report_id}, {amount} (the pickup's price, two
// decimals), {currency}, {reason} (the dispute reason, "no reason given" when
// absent). A placeholder without a value renders as "". Any other text in braces
// is kept as written. Substitution is one pass: a value that itself contains
// "{amount}" is not expanded again.
//
// Overrides come from config [notifications.templates.TYPE] with keys `title`
// and/or `body`; a key left out keeps the default.
//
// Immutable after construction, so one instance is shared by every worker.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace klynaa::actors {

struct message_template {
  std::string title;
  std::string body;
};

/// The notification types of protocol::notification_types() (schema.cpp), as strings.
const std::vector<std::string>& notification_types();

/// The placeholders a template may use, without braces.
const std::vector<std::string>& template_placeholders();

/// Placeholder name (without braces) → value.
using template_values = std::map<std::string, std::string>;

class templates {
 public:
  /// The defaults above, with `overrides` (notification_type → {"title"|"body" →
  /// text}) applied. Unknown types and keys are ignored here; check_overrides()
  /// reports them.
  explicit templates(const std::map<std::string, std::map<std::string, std::string>>& overrides = {});

  /// The title and body for `notification_type` with `values` filled in; nothing
  /// for a type that is not in notification_types().
  std::optional<message_template> render(std::string_view notification_type,
                                         const template_values& values) const;

  /// The template of `notification_type` before substitution.
  std::optional<message_template> raw(std::string_view notification_type) const;

  /// The built-in templates.
  static const std::map<std::string, message_template>& defaults();

  /// Problems with config overrides, each naming its key (e.g.
  /// "[notifications.templates.pickup_sent]: unknown notification_type"): unknown
  /// types, keys other than title/body, and unknown placeholders. Empty when fine.
  static std::vector<std::string> check_overrides(
      const std::map<std::string, std::map<std::string, std::string>>& overrides);

 private:
  std::map<std::string, message_template> by_type_;
};

/// Replaces each {name} whose name is in `values` (or in template_placeholders(),
/// rendering "" when it has no value); other braces stay as written.
std::string fill_template(std::string_view text, const template_values& values);

}  // namespace klynaa::actors
