// A small HdrHistogram-style latency histogram for the benchmarks and the
// broker's ack timeline (there is no
// Debian package of HdrHistogram_c): log-bucketed, fixed memory, O(1) record,
// mergeable, ~0.4% worst-case relative error on any recorded value.
//
// Layout: values 0..255 have one bucket each (exact). Above that, each power of two
// [2^k, 2^(k+1)) is split into 128 equal sub-buckets, so a bucket's width is at most
// 1/128 of its lower bound; percentiles report the bucket's midpoint, which is within
// 1/256 (0.39%) of every value in it. Values are unsigned 64-bit (the benchmarks
// record nanoseconds), so the table has 256 + 56 * 128 = 7424 counters (58 KiB).
// Header-only, no dependencies beyond the standard library; tested in
// tests/protocol/histogram_test.cpp.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>

namespace klynaa::protocol {

class histogram {
 public:
  static constexpr int sub_bits = 7;                        ///< 128 sub-buckets per octave
  static constexpr uint64_t sub_count = uint64_t{1} << sub_bits;
  static constexpr size_t bucket_count = 2 * sub_count + (63 - sub_bits) * sub_count;

  histogram() : counts_(new uint64_t[bucket_count]()) {}
  histogram(const histogram& o) : histogram() { *this += o; }
  histogram& operator=(const histogram& o) {
    if (this != &o) {
      reset();
      *this += o;
    }
    return *this;
  }
  histogram(histogram&&) noexcept = default;
  histogram& operator=(histogram&&) noexcept = default;

  /// The bucket a value falls in.
  static constexpr size_t index_of(uint64_t v) {
    if (v < 2 * sub_count) return static_cast<size_t>(v);
    int msb = 63 - __builtin_clzll(v);       // >= sub_bits + 1
    int shift = msb - sub_bits;              // >= 1
    uint64_t mantissa = v >> shift;          // in [sub_count, 2*sub_count)
    return static_cast<size_t>(2 * sub_count + (shift - 1) * sub_count + (mantissa - sub_count));
  }
  /// The smallest value of bucket `i`.
  static constexpr uint64_t lowest_of(size_t i) {
    if (i < 2 * sub_count) return i;
    size_t j = i - 2 * sub_count;
    int shift = static_cast<int>(j / sub_count) + 1;
    uint64_t mantissa = sub_count + j % sub_count;
    return mantissa << shift;
  }
  /// The largest value of bucket `i`.
  static constexpr uint64_t highest_of(size_t i) {
    if (i + 1 >= bucket_count) return std::numeric_limits<uint64_t>::max();
    return lowest_of(i + 1) - 1;
  }
  /// The value a percentile reports for bucket `i`: its midpoint.
  static constexpr uint64_t median_of(size_t i) {
    uint64_t lo = lowest_of(i), hi = highest_of(i);
    return lo + (hi - lo) / 2;
  }

  void record(uint64_t v, uint64_t times = 1) {
    counts_[index_of(v)] += times;
    count_ += times;
    sum_ += static_cast<double>(v) * static_cast<double>(times);
    min_ = std::min(min_, v);
    max_ = std::max(max_, v);
  }

  histogram& operator+=(const histogram& o) {
    for (size_t i = 0; i < bucket_count; ++i) counts_[i] += o.counts_[i];
    count_ += o.count_;
    sum_ += o.sum_;
    min_ = std::min(min_, o.min_);
    max_ = std::max(max_, o.max_);
    return *this;
  }

  void reset() {
    std::fill(counts_.get(), counts_.get() + bucket_count, uint64_t{0});
    count_ = 0;
    sum_ = 0;
    min_ = std::numeric_limits<uint64_t>::max();
    max_ = 0;
  }

  uint64_t count() const { return count_; }
  uint64_t min() const { return count_ ? min_ : 0; }
  uint64_t max() const { return max_; }
  double mean() const { return count_ ? sum_ / static_cast<double>(count_) : 0.0; }

  /// The value at quantile `q` in [0, 1] (0.99 = p99): the midpoint of the bucket
  /// holding the ceil(q * count)-th smallest value, clamped to [min, max]. 0 when empty.
  uint64_t quantile(double q) const {
    if (count_ == 0) return 0;
    q = std::clamp(q, 0.0, 1.0);
    uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
    rank = std::clamp<uint64_t>(rank, 1, count_);
    uint64_t seen = 0;
    for (size_t i = 0; i < bucket_count; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::clamp(median_of(i), min_, max_);
    }
    return max_;
  }

 private:
  std::unique_ptr<uint64_t[]> counts_;
  uint64_t count_ = 0;
  double sum_ = 0;
  uint64_t min_ = std::numeric_limits<uint64_t>::max();
  uint64_t max_ = 0;
};

// Self-checks of the bucket arithmetic, at compile time.
static_assert(histogram::bucket_count == 7424);
static_assert(histogram::index_of(255) == 255 && histogram::index_of(256) == 256);
static_assert(histogram::index_of(511) == 383 && histogram::index_of(512) == 384);
static_assert(histogram::lowest_of(histogram::index_of(1000003)) <= 1000003 &&
              histogram::highest_of(histogram::index_of(1000003)) >= 1000003);
static_assert(histogram::index_of(~uint64_t{0}) == histogram::bucket_count - 1);
static_assert(histogram::lowest_of(histogram::bucket_count - 1) == (uint64_t{255} << 56));

}  // namespace klynaa::protocol
