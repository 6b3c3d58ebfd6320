// Run extraction shared by both kernel sets (internal to native/bitmap). A word's run starts are
// the set bits whose previous page is clear, its run ends the clear bits whose previous page is
// set; "previous" of bit 0 is the top bit of the word before (the carry), so runs join across
// words without per-bit work. Starts and ends alternate in page order.
#pragma once
#include <cstdint>

#include "bitmap/bitmap.h"

namespace dpa::bitmap::detail {

class RunWriter {
 public:
  RunWriter(uint32_t* out, uint64_t maxExtents) : out_(out), max_(maxExtents) {}

  /** True when the last page seen was set (a run is open). */
  bool InRun() const { return carry_ != 0; }

  /** Word `index` of the bitmap, masked to `pages` if it is the last one. */
  void Word(uint64_t index, uint64_t w) {
    const uint64_t previous = (w << 1) | carry_;
    const uint64_t starts = w & ~previous;
    const uint64_t ends = ~w & previous;
    carry_ = w >> 63;
    uint64_t events = starts | ends;
    const uint64_t base = index * 64;
    while (events) {
      const unsigned bit = static_cast<unsigned>(__builtin_ctzll(events));
      if ((starts >> bit) & 1) {
        start_ = base + bit;
      } else {
        Emit(start_, base + bit - start_);
      }
      events &= events - 1;
    }
  }

  /** Closes a run that reaches the last page; `pages` is the bitmap's page count. */
  ExtentsResult Finish(uint64_t pages) {
    if (carry_) Emit(start_, pages - start_);
    return {returned_, total_};
  }

 private:
  void Emit(uint64_t start, uint64_t length) {
    if (returned_ < max_) {
      out_[2 * returned_] = static_cast<uint32_t>(start);
      out_[2 * returned_ + 1] = static_cast<uint32_t>(length);
      returned_++;
    }
    total_++;
  }

  uint32_t* out_;
  uint64_t max_;
  uint64_t returned_ = 0;
  uint64_t total_ = 0;
  uint64_t carry_ = 0;
  uint64_t start_ = 0;
};

}  // namespace dpa::bitmap::detail
