// `klynaa publish` and `klynaa invoke`: one request to the ingress over a DEALER
// socket (with a delimiter frame, like REQ), the reply printed as JSON.
#include <chrono>
#include <iostream>
#include <random>

#include <zmq.hpp>

#include "cli/commands.hpp"
#include "protocol/message.hpp"
#include "protocol/schema.hpp"

namespace klynaa::cli {

namespace {

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string random_id(const char* prefix) {
  std::random_device rd;
  std::mt19937_64 g(rd());
  static const char hex[] = "0123456789abcdef";
  std::string s = prefix;
  for (int i = 0; i < 24; ++i) s += hex[g() % 16];
  return s;
}

/// Sends `frame` to each endpoint of the comma-separated list in turn until one
/// answers within `timeout_ms`. Returns the reply frame, or nullopt.
std::optional<std::string> round_trip(const std::string& endpoints, const std::string& frame,
                                      int64_t timeout_ms) {
  zmq::context_t ctx;
  std::stringstream ss(endpoints);
  std::string ep;
  while (std::getline(ss, ep, ',')) {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    s.connect(ep);
    s.send(zmq::message_t(), zmq::send_flags::sndmore);
    s.send(zmq::buffer(frame), zmq::send_flags::none);
    zmq::pollitem_t items[] = {{static_cast<void*>(s), 0, ZMQ_POLLIN, 0}};
    if (zmq::poll(items, 1, std::chrono::milliseconds(timeout_ms)) <= 0) continue;
    std::vector<zmq::message_t> parts;
    zmq::message_t m;
    while (s.recv(m, zmq::recv_flags::dontwait)) {
      bool more = m.more();
      parts.push_back(std::move(m));
      if (!more) break;
    }
    if (!parts.empty()) return parts.back().to_string();
  }
  return std::nullopt;
}

bool parse_data(const parsed_args& args, const char* cmd, nlohmann::json& data) {
  auto text = args.get("data");
  if (!text) {
    std::cerr << "klynaa " << cmd << ": --data JSON is required (e.g. --data '{\"pickup_id\": 1}')\n";
    return false;
  }
  data = nlohmann::json::parse(*text, nullptr, false);
  if (data.is_discarded() || !data.is_object()) {
    std::cerr << "klynaa " << cmd << ": --data must be a JSON object, got: " << *text << "\n";
    return false;
  }
  return true;
}

int send_and_print(const protocol::request& req, const std::string& ingress, int64_t wait_ms,
                   bool invoke) {
  auto reply_frame = round_trip(ingress, protocol::encode_request(req), wait_ms);
  if (!reply_frame) {
    std::cerr << "klynaa: no answer from " << ingress << " within " << wait_ms << " ms\n";
    return 1;
  }
  auto rep = protocol::decode_reply(reply_frame->data(), reply_frame->size());
  if (!rep) {
    std::cerr << "klynaa: the broker's answer is not a reply\n";
    return 1;
  }
  std::cout << protocol::reply_to_json(*rep).dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  using rs = protocol::reply_status;
  switch (rep->status) {
    case rs::rejected: return 2;
    case rs::accepted:
    case rs::duplicate: return invoke ? 1 : 0;
    case rs::ok: return 0;
    default: return 1;
  }
}

}  // namespace

int cmd_publish(int argc, char** argv) {
  parsed_args args;
  std::string err;
  std::vector<flag_spec> specs = {{"data", true, "the event's data as a JSON object"},
                                  {"id", true, "the event id (idempotency key); default random"},
                                  {"ingress", true, "ingress endpoint(s), comma-separated"},
                                  {"timeout", true, "seconds to wait for the answer (default 10)"}};
  if (!parse_args(argc, argv, 2, specs, args, err) || args.positional.size() != 1) {
    std::cerr << "klynaa publish: " << (err.empty() ? "name one event TYPE" : err) << "\n"
              << "usage: klynaa publish TYPE --data JSON [--id ID] [--ingress E]\n";
    return 2;
  }
  protocol::request req;
  req.operation = protocol::op::publish;
  req.type = args.positional[0];
  req.id = args.get("id").value_or(random_id("cli-"));
  req.ts_ms = now_ms();
  if (!parse_data(args, "publish", req.data)) return 2;
  int64_t wait = 10000;
  if (auto t = args.get("timeout")) wait = static_cast<int64_t>(std::stod(*t) * 1000);
  return send_and_print(req, args.get("ingress").value_or("tcp://127.0.0.1:5555"), wait, false);
}

int cmd_invoke(int argc, char** argv) {
  parsed_args args;
  std::string err;
  std::vector<flag_spec> specs = {{"data", true, "the function's data as a JSON object"},
                                  {"id", true, "request id (idempotency key); default random"},
                                  {"ingress", true, "ingress endpoint(s), comma-separated"},
                                  {"timeout", true, "seconds to wait for the outcome (default 30)"}};
  if (!parse_args(argc, argv, 2, specs, args, err) || args.positional.size() != 1) {
    std::cerr << "klynaa invoke: " << (err.empty() ? "name one FUNCTION" : err) << "\n"
              << "usage: klynaa invoke FUNCTION --data JSON [--ingress E] [--timeout S]\n";
    return 2;
  }
  protocol::request req;
  req.operation = protocol::op::invoke;
  req.type = args.positional[0];
  req.id = args.get("id").value_or(random_id("invoke-"));
  req.ts_ms = now_ms();
  if (!parse_data(args, "invoke", req.data)) return 2;
  double seconds = 30;
  if (auto t = args.get("timeout")) {
    try {
      seconds = std::stod(*t);
    } catch (...) {
      seconds = -1;
    }
    if (!(seconds > 0)) {
      std::cerr << "klynaa invoke: --timeout must be a positive number of seconds, got " << *t << "\n";
      return 2;
    }
  }
  req.timeout_ms = static_cast<int64_t>(seconds * 1000);
  // The broker answers `timeout` itself at timeout_ms; wait a little longer for it.
  return send_and_print(req, args.get("ingress").value_or("tcp://127.0.0.1:5555"),
                        req.timeout_ms + 2000, true);
}

}  // namespace klynaa::cli
