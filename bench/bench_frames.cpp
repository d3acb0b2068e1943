// The frames of klynaa-bench (bench_frames.hpp): msgpack packed by hand.
#include "bench/bench_frames.hpp"

#include <map>

#include "bench/bench_common.hpp"

namespace klynaa::bench {

namespace {

using packer = msgpack::packer<msgpack::sbuffer>;

void pack_str(packer& p, std::string_view s) {
  p.pack_str(static_cast<uint32_t>(s.size()));
  p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

/// What one generated `data` map is made of: the key id, more hash bits, a place.
struct data_source {
  uint64_t key;
  uint64_t h2;
  double lat;
  double lng;
};

/// The packer, and helpers that write one key and its value.
struct data_writer {
  packer& p;
  void kv_int(std::string_view k, uint64_t v) { pack_str(p, k); p.pack_uint64(v); }
  void kv_dbl(std::string_view k, double v) { pack_str(p, k); p.pack_double(v); }
  void kv_str(std::string_view k, std::string_view v) { pack_str(p, k); pack_str(p, v); }
};

/// The data of an event type (updateWorkerLocation shares worker.location's);
/// false when `type` is none of them.
bool pack_event_data(data_writer& w, const std::string& type, const data_source& d) {
  packer& p = w.p;
  if (type == "worker.location" || type == "updateWorkerLocation") {
    p.pack_map(4);
    w.kv_int("worker_id", d.key);
    w.kv_dbl("lat", d.lat);
    w.kv_dbl("lng", d.lng);
    pack_str(p, "available");
    if (d.h2 & 1) p.pack_true(); else p.pack_false();
  } else if (type == "pickup.created") {
    p.pack_map(6);
    w.kv_int("pickup_id", d.key);
    w.kv_int("customer_id", 1 + (d.h2 % 1000));
    w.kv_dbl("lat", d.lat);
    w.kv_dbl("lng", d.lng);
    w.kv_str("waste_type", "plastic");
    w.kv_dbl("radius_km", 5.0);
  } else if (type == "pickup.accepted" || type == "pickup.delivered") {
    p.pack_map(3);
    w.kv_int("pickup_id", d.key);
    w.kv_int("customer_id", 1 + (d.h2 % 1000));
    w.kv_int("worker_id", 1 + ((d.h2 >> 20) % 1000));
  } else if (type == "pickup.confirmed") {
    p.pack_map(2);
    w.kv_int("pickup_id", d.key);
    w.kv_int("customer_id", 1 + (d.h2 % 1000));
  } else if (type == "pickup.disputed") {
    p.pack_map(2);
    w.kv_int("pickup_id", d.key);
    w.kv_str("reason", "benchmark");
  } else {
    return false;
  }
  return true;
}

/// The data of a function invoked by name; false when `type` is none of them.
bool pack_function_data(data_writer& w, const std::string& type, const data_source& d) {
  packer& p = w.p;
  if (type == "notifyNearbyWorkers") {
    p.pack_map(4);
    w.kv_int("pickup_id", d.key);
    w.kv_dbl("lat", d.lat);
    w.kv_dbl("lng", d.lng);
    w.kv_dbl("radius_km", 5.0);
  } else if (type == "sendPickupNotification") {
    p.pack_map(4);
    w.kv_int("pickup_id", d.key);
    w.kv_str("notification_type", "pickup_accepted");
    w.kv_str("user_type", "customer");
    w.kv_int("user_id", 1 + (d.h2 % 1000));
  } else if (type == "processEscrowRelease") {
    p.pack_map(2);
    w.kv_int("pickup_id", d.key);
    w.kv_str("release_reason", "admin");
  } else if (type == "generateDailyReport" || type == "generateWeeklyAnalytics") {
    p.pack_map(0);
  } else if (type == "cleanupData") {
    p.pack_map(1);
    w.kv_int("older_than_days", 90);
  } else {
    return false;
  }
  return true;
}

/// Valid, pseudo-random `data` for `type`, derived from `h`. Ids are in [1, keys].
/// False when the type is unknown.
bool pack_data(packer& p, const std::string& type, uint64_t h, uint64_t keys) {
  data_source d;
  d.key = 1 + (h % keys);
  d.h2 = splitmix64(h);
  d.lat = -90.0 + static_cast<double>(d.h2 % 18000001) / 100000.0;
  d.lng = -180.0 + static_cast<double>((d.h2 >> 25) % 36000001) / 100000.0;
  data_writer w{p};
  return pack_event_data(w, type, d) || pack_function_data(w, type, d);
}

}  // namespace

std::string default_function(const std::string& type) {
  static const std::map<std::string, std::string> m = {
      {"worker.location", "updateWorkerLocation"},
      {"pickup.created", "notifyNearbyWorkers"},
      {"pickup.accepted", "sendPickupNotification"},
      {"pickup.delivered", "sendPickupNotification"},
      {"pickup.confirmed", "processEscrowRelease"},
      {"pickup.disputed", "sendPickupNotification"},
      {"updateWorkerLocation", "updateWorkerLocation"},
      {"notifyNearbyWorkers", "notifyNearbyWorkers"},
      {"sendPickupNotification", "sendPickupNotification"},
      {"processEscrowRelease", "processEscrowRelease"},
      {"generateDailyReport", "generateDailyReport"},
      {"generateWeeklyAnalytics", "generateWeeklyAnalytics"},
      {"cleanupData", "cleanupData"},
  };
  auto it = m.find(type);
  return it == m.end() ? std::string() : it->second;
}

void build_request(msgpack::sbuffer& buf, bool invoke, const std::string& id,
                   const std::string& type, const std::string& function, uint64_t h,
                   uint64_t keys, int64_t timeout_ms) {
  buf.clear();
  packer p(buf);
  p.pack_map(invoke ? 7 : 6);
  pack_str(p, "v");
  p.pack_int(1);
  pack_str(p, "op");
  pack_str(p, invoke ? "invoke" : "publish");
  pack_str(p, "id");
  pack_str(p, id);
  pack_str(p, "type");
  pack_str(p, invoke ? function : type);
  pack_str(p, "ts");
  p.pack_int64(wall_ms());
  pack_str(p, "data");
  pack_data(p, invoke ? function : type, h, keys);
  if (invoke) {
    pack_str(p, "timeout_ms");
    p.pack_int64(timeout_ms);
  }
}

bool read_reply(const msgpack::object& o, reply_view& r) {
  if (o.type != msgpack::type::MAP) return false;
  for (uint32_t i = 0; i < o.via.map.size; ++i) {
    const auto& kv = o.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR) continue;
    std::string_view k(kv.key.via.str.ptr, kv.key.via.str.size);
    if (k == "id" && kv.val.type == msgpack::type::STR)
      r.id = std::string_view(kv.val.via.str.ptr, kv.val.via.str.size);
    else if (k == "status" && kv.val.type == msgpack::type::STR)
      r.status = std::string_view(kv.val.via.str.ptr, kv.val.via.str.size);
    else if (k == "retry_after_ms" && kv.val.type == msgpack::type::POSITIVE_INTEGER)
      r.retry_after_ms = static_cast<int64_t>(kv.val.via.u64);
  }
  return !r.status.empty();
}

}  // namespace klynaa::bench
