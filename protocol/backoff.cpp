// See backoff.hpp.
#include "protocol/backoff.hpp"

#include <algorithm>

namespace klynaa::protocol {

int64_t capped_doubling(int64_t first, int64_t cap, int64_t doublings) {
  int64_t d = first;
  // Stops once the cap is reached: at most 63 rounds, whatever `doublings` is.
  for (int64_t i = 0; i < doublings && d > 0 && d < cap; ++i) d = d > cap / 2 ? cap : d * 2;
  return std::min(d, cap);
}

}  // namespace klynaa::protocol
