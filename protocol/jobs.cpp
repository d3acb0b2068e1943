// Job derivation of docs/events-and-functions.md, "Events" (see jobs.hpp): one
// small function per event.
#include "protocol/jobs.hpp"

#include "protocol/schema.hpp"

namespace klynaa::protocol {

namespace {

using json = nlohmann::json;

// Copies data[key] into out when present and not null.
void copy_if_given(const json& data, const char* key, json& out) {
  auto it = data.find(key);
  if (it != data.end() && !it->is_null())
    out[key] = *it;
}

json get(const json& data, const char* key) {
  auto it = data.find(key);
  return it == data.end() ? json() : *it;
}

class builder {
 public:
  explicit builder(const request& r) : r_(r) {}

  job_spec& add(std::string function, json data) {
    job_spec j;
    j.id = child_job_id(r_.id, static_cast<int64_t>(out_.jobs.size()) + 1);
    j.function = std::move(function);
    j.ordering_key = ordering_key_of(data);
    j.data = std::move(data);
    out_.jobs.push_back(std::move(j));
    return out_.jobs.back();
  }

  json notification(std::string_view type, std::string_view user_type) const {
    return json{{"pickup_id", get(r_.data, "pickup_id")},
                {"notification_type", type},
                {"user_type", user_type}};
  }

  void close_pickup() {
    const auto& p = r_.data.find("pickup_id");
    if (p != r_.data.end() && p->is_number_integer())
      out_.closes_pickup = p->get<int64_t>();
  }

  derivation take() { return std::move(out_); }

 private:
  const request& r_;
  derivation out_;
};

void pickup_created(const request& r, builder& b) {
  json data{{"pickup_id", get(r.data, "pickup_id")},
            {"lat", get(r.data, "lat")},
            {"lng", get(r.data, "lng")}};
  copy_if_given(r.data, "radius_km", data);
  b.add("notifyNearbyWorkers", std::move(data));
}

void pickup_accepted(const request& r, builder& b) {
  json data = b.notification("pickup_accepted", "customer");
  data["user_id"] = get(r.data, "customer_id");
  b.add("sendPickupNotification", std::move(data));
}

void pickup_delivered(const request& r, int64_t hold_ms, builder& b) {
  json note = b.notification("pickup_delivered", "customer");
  note["user_id"] = get(r.data, "customer_id");
  b.add("sendPickupNotification", std::move(note));
  auto& release = b.add("processEscrowRelease", json{{"pickup_id", get(r.data, "pickup_id")},
                                                     {"release_reason", "auto_release"}});
  release.due_ms = r.ts_ms + hold_ms;
  release.auto_release = true;
}

void pickup_confirmed(const request& r, builder& b) {
  b.add("processEscrowRelease", json{{"pickup_id", get(r.data, "pickup_id")},
                                     {"release_reason", "customer_confirmed"}});
  b.close_pickup();
}

void pickup_disputed(const request& r, builder& b) {
  json data = b.notification("pickup_disputed", "admin");
  copy_if_given(r.data, "reason", data);
  b.add("sendPickupNotification", std::move(data));
  b.close_pickup();
}

void worker_location(const request& r, builder& b) {
  b.add("updateWorkerLocation", json{{"worker_id", get(r.data, "worker_id")},
                                     {"lat", get(r.data, "lat")},
                                     {"lng", get(r.data, "lng")},
                                     {"available", get(r.data, "available")}});
}

}  // namespace

derivation derive_jobs(const request& r, int64_t escrow_hold_ms) {
  builder b(r);
  if (r.operation == op::ping)
    return b.take();
  if (find_function(r.type)) {
    b.add(r.type, r.data.is_object() ? r.data : json::object());
    return b.take();
  }
  if (r.operation == op::invoke)
    return b.take();  // invoke takes functions only; decode_request rejects the rest
  if (r.type == "pickup.created") pickup_created(r, b);
  else if (r.type == "pickup.accepted") pickup_accepted(r, b);
  else if (r.type == "pickup.delivered") pickup_delivered(r, escrow_hold_ms, b);
  else if (r.type == "pickup.confirmed") pickup_confirmed(r, b);
  else if (r.type == "pickup.disputed") pickup_disputed(r, b);
  else if (r.type == "worker.location") worker_location(r, b);
  return b.take();
}

std::string ordering_key_of(const nlohmann::json& data) {
  if (!data.is_object())
    return {};
  auto p = data.find("pickup_id");
  if (p != data.end() && p->is_number_integer())
    return "pickup:" + p->dump();
  auto w = data.find("worker_id");
  if (w != data.end() && w->is_number_integer())
    return "worker:" + w->dump();
  return {};
}

std::string child_job_id(std::string_view parent, int64_t n) {
  std::string id{parent};
  id += '#';
  id += std::to_string(n);
  return id;
}

std::string once_job_id(std::string_view name, std::string_view key) {
  std::string id = "#";
  id.append(name.data(), name.size());
  id += '-';
  id.append(key.data(), key.size());
  return id;
}

std::string pickup_job_id(std::string_view name, int64_t pickup_id) {
  return once_job_id(name, std::to_string(pickup_id));
}

}  // namespace klynaa::protocol

namespace klynaa::protocol {

bool is_fanout(std::string_view function) {
  const auto* f = find_function(function);
  return f != nullptr && f->fanout;
}

}  // namespace klynaa::protocol
