// `klynaa publish` and `klynaa invoke`: one request to the ingress over a DEALER
// socket (with a delimiter frame, like REQ), the reply printed as JSON.
#include <chrono>
#include <cstring>
#include <iostream>
#include <random>

#include <zmq.hpp>

#include "cli/commands.hpp"
#include "cli/keys.hpp"
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

/// What happened to the CURVE handshakes of round_trip(), for the message when
/// no answer came.
struct handshake_notes {
  bool refused = false;  ///< the broker's ZAP handler said no (our key is not listed)
  bool failed = false;   ///< another handshake failure (wrong server key, no CURVE there)
};

/// Whether `frame` is a standby broker's refusal (docs/deployment.md): rejected,
/// overloaded, with a message that starts "standby broker".
bool from_a_standby(const std::string& frame) {
  auto rep = protocol::decode_reply(frame.data(), frame.size());
  return rep && rep->status == protocol::reply_status::rejected && rep->error &&
         rep->error->code == "overloaded" && rep->error->message.rfind("standby broker", 0) == 0;
}

/// Sends `frame` to each endpoint of the comma-separated list in turn until one
/// answers within `timeout_ms`. Returns the reply frame, or nullopt. A standby's
/// refusal moves on to the next endpoint (and is returned only when no endpoint
/// gave a better answer). With `curve`, every socket is a CURVE client and its
/// handshake failures are noted.
std::optional<std::string> round_trip(const std::string& endpoints, const std::string& frame,
                                      int64_t timeout_ms, const std::optional<curve_client_keys>& curve,
                                      handshake_notes& notes) {
  zmq::context_t ctx;
  std::stringstream ss(endpoints);
  std::string ep;
  int n = 0;
  std::optional<std::string> standby_reply;
  while (std::getline(ss, ep, ',')) {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    std::optional<zmq::socket_t> monitor;
    if (curve) {
      s.set(zmq::sockopt::curve_serverkey, curve->server_key);
      s.set(zmq::sockopt::curve_publickey, curve->own.public_key);
      s.set(zmq::sockopt::curve_secretkey, curve->own.secret_key);
      const std::string mon = "inproc://klynaa-client-monitor-" + std::to_string(++n);
      if (zmq_socket_monitor(s.handle(), mon.c_str(),
                             ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0) {
        monitor.emplace(ctx, zmq::socket_type::pair);
        monitor->set(zmq::sockopt::linger, 0);
        monitor->connect(mon);
      }
    }
    s.connect(ep);
    s.send(zmq::message_t(), zmq::send_flags::sndmore);
    s.send(zmq::buffer(frame), zmq::send_flags::none);
    zmq::pollitem_t items[] = {{static_cast<void*>(s), 0, ZMQ_POLLIN, 0}};
    bool answered = zmq::poll(items, 1, std::chrono::milliseconds(timeout_ms)) > 0;
    if (monitor) {
      zmq::message_t ev;
      while (monitor->recv(ev, zmq::recv_flags::dontwait)) {
        if (!ev.more() || ev.size() < 6) continue;  // an event is [6 bytes: event, value][endpoint]
        uint16_t event = 0;
        std::memcpy(&event, ev.data(), 2);
        (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ? notes.refused : notes.failed) = true;
      }
    }
    if (!answered) continue;
    std::vector<zmq::message_t> parts;
    zmq::message_t m;
    while (s.recv(m, zmq::recv_flags::dontwait)) {
      bool more = m.more();
      parts.push_back(std::move(m));
      if (!more) break;
    }
    if (parts.empty()) continue;
    auto frame_in = parts.back().to_string();
    if (!from_a_standby(frame_in)) return frame_in;
    standby_reply = std::move(frame_in);
  }
  return standby_reply;
}

/// The CURVE keys of a client command: --server-key / --key over
/// ingress.curve_server_public_file / curve_client_secret_file. False (exit 2)
/// with a message naming the flag or key.
bool client_curve(const parsed_args& args, const char* cmd, std::optional<curve_client_keys>& out) {
  protocol::config cfg;
  std::string err;
  if (!load_config(args, cfg, err)) {
    std::cerr << "klynaa " << cmd << ": " << err << "\n";
    return false;
  }
  key_source server{cfg.ingress.curve_server_public_file, "[ingress] curve_server_public_file"};
  key_source own{cfg.ingress.curve_client_secret_file, "[ingress] curve_client_secret_file"};
  if (auto f = args.get("server-key")) server = {*f, "--server-key"};
  if (auto f = args.get("key")) own = {*f, "--key"};
  // Neither given: name both ways to give it.
  if (server.path.empty()) server.what = "--server-key (or " + server.what + ")";
  if (own.path.empty()) own.what = "--key (or " + own.what + ")";
  out = load_client_keys(server, own, err);
  if (!err.empty()) {
    std::cerr << "klynaa " << cmd << ": " << err << "\n";
    return false;
  }
  return true;
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
                   bool invoke, const std::optional<curve_client_keys>& curve) {
  handshake_notes notes;
  auto reply_frame = round_trip(ingress, protocol::encode_request(req), wait_ms, curve, notes);
  if (!reply_frame) {
    std::cerr << "klynaa: no answer from " << ingress << " within " << wait_ms << " ms\n";
    if (notes.refused)
      std::cerr << "klynaa: the broker refused this client's CURVE key " << curve->own.public_key
                << ": add it to the broker's ingress.curve_allow_file\n";
    else if (notes.failed)
      std::cerr << "klynaa: the CURVE handshake failed: is the server key the broker's public key, and "
                   "does its ingress have curve = true?\n";
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
                                  {"timeout", true, "seconds to wait for the answer (default 10)"},
                                  {"server-key", true, "CURVE: the broker's public key file"},
                                  {"key", true, "CURVE: this client's key pair file"},
                                  {"config", true, "TOML config file (ingress.curve_* keys)"}};
  if (!parse_args(argc, argv, 2, specs, args, err) || args.positional.size() != 1) {
    std::cerr << "klynaa publish: " << (err.empty() ? "name one event TYPE" : err) << "\n"
              << "usage: klynaa publish TYPE --data JSON [--id ID] [--ingress E] [--timeout S] "
                 "[--server-key F --key F] [--config F]\n";
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
  std::optional<curve_client_keys> curve;
  if (!client_curve(args, "publish", curve)) return 2;
  return send_and_print(req, args.get("ingress").value_or("tcp://127.0.0.1:5555"), wait, false, curve);
}

int cmd_invoke(int argc, char** argv) {
  parsed_args args;
  std::string err;
  std::vector<flag_spec> specs = {{"data", true, "the function's data as a JSON object"},
                                  {"id", true, "request id (idempotency key); default random"},
                                  {"ingress", true, "ingress endpoint(s), comma-separated"},
                                  {"timeout", true, "seconds to wait for the outcome (default 30)"},
                                  {"server-key", true, "CURVE: the broker's public key file"},
                                  {"key", true, "CURVE: this client's key pair file"},
                                  {"config", true, "TOML config file (ingress.curve_* keys)"}};
  if (!parse_args(argc, argv, 2, specs, args, err) || args.positional.size() != 1) {
    std::cerr << "klynaa invoke: " << (err.empty() ? "name one FUNCTION" : err) << "\n"
              << "usage: klynaa invoke FUNCTION --data JSON [--ingress E] [--timeout S] "
                 "[--server-key F --key F] [--config F]\n";
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
  std::optional<curve_client_keys> curve;
  if (!client_curve(args, "invoke", curve)) return 2;
  // The broker answers `timeout` itself at timeout_ms; wait a little longer for it.
  return send_and_print(req, args.get("ingress").value_or("tcp://127.0.0.1:5555"),
                        req.timeout_ms + 2000, true, curve);
}

}  // namespace klynaa::cli
