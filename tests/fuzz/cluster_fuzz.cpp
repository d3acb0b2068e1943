// libFuzzer target: one cluster-protocol frame of arbitrary bytes through what
// the broker and a node do with it (broker/sessions.cpp handle_node_message,
// nodes/gateway.cpp on_frame): protocol::cluster::decode, and for a BATCH each
// inner frame decoded in turn (one level: a BATCH inside a BATCH is decoded, then
// ignored by both peers).
//
// Checks, for every input: decode never throws (a finding is any exception,
// crash or sanitizer report); a decoded message re-encodes to a frame that
// decodes to the same kind of message and encodes to the same bytes again (the
// codec is a fixed point after one round); a BATCH re-encoded by encode_batch
// is the same frame as through encode. docs/reliability.md "Fuzzing".
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <variant>

#include "check.hpp"
#include "protocol/cluster.hpp"

namespace cl = klynaa::protocol::cluster;

namespace {

/// Decodes `frame`; when it is a message, checks the round trip and returns it.
std::optional<cl::message> decode_checked(const std::string& frame) {
  std::string error;
  auto m = cl::decode(frame.data(), frame.size(), &error);
  if (!m) {
    FUZZ_CHECK(!error.empty());  // a rejection always says why
    return std::nullopt;
  }
  const auto once = cl::encode(*m);
  auto back = cl::decode(once.data(), once.size(), &error);
  FUZZ_CHECK(back.has_value());
  FUZZ_CHECK(back->index() == m->index());
  FUZZ_CHECK(cl::encode(*back) == once);
  if (auto* b = std::get_if<cl::batch>(&*m)) {
    FUZZ_CHECK(b->frames.size() <= cl::max_batch);
    FUZZ_CHECK(cl::encode_batch(b->frames) == once);
  }
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string frame(reinterpret_cast<const char*>(data), size);
  auto m = decode_checked(frame);
  if (m)
    if (auto* b = std::get_if<cl::batch>(&*m))
      for (const auto& inner : b->frames)
        decode_checked(inner);  // what the receiver does with each; a nested BATCH goes no deeper
  return 0;
}
