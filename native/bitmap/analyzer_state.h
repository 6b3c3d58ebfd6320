// The Analyzer's state and the per-level parts of its pass (internal to native/bitmap).
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "bitmap/analyzer.h"

namespace dpa::bitmap::detail {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Array = std::unique_ptr<T[], FreeDeleter>;

/** One segment's nonzero words of one interval in ascending word order, kept while it is in the heat window. */
struct RingSlot {
  Array<uint32_t> index;
  Array<uint64_t> word;
  size_t size = 0;
  size_t capacity = 0;
  /** Grows (geometrically) to hold at least n entries; existing entries are kept. */
  void Reserve(size_t n);
};

/** One nonzero word of the new interval. */
struct Work {
  uint64_t set;    // its dirty pages
  uint32_t index;  // word index
};

/** Counts of one pass (or one part of it), for PushResult and PushTraffic. */
struct PassTotals {
  uint64_t dirty = 0;
  uint64_t newly = 0;
  uint64_t setWords = 0;  // words dirty in the new interval
};

/**
 * A persistent helper thread running one job at a time: the second half of a push on a large
 * guest. Started once per analyzer (a thread start per push would cost more than it saves).
 */
class Worker {
 public:
  Worker();
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  void Start(std::function<void()> job);
  /** Waits for the job; rethrows what it threw. */
  void Wait();

 private:
  void Loop();
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::function<void()> job_;
  std::exception_ptr error_;
  bool pending_ = false;
  bool stop_ = false;
  std::thread thread_;  // last: started after the members it uses
};

/**
 * One thread's context in a push: its prefetch queue, where its curve updates go (the
 * analyzer's own counters for thread 0, a private delta array, added after the join mod 2^64,
 * for thread 1) and its counts.
 */
struct ThreadContext {
  std::vector<Work> work;  // queue of scanned words waiting for their state lines
  std::vector<uint64_t> curveDelta;
  uint64_t* curve = nullptr;
  PassTotals totals;
};

struct AnalyzerState {
  AnalyzerConfig config{};
  uint64_t words = 0;      // ceil(pages / 64)
  uint64_t fullWords = 0;  // pages / 64
  uint64_t tailPages = 0;  // pages % 64
  uint64_t regionWords = 0;
  unsigned regionShift = 0;  // log2(regionWords): a shift, not a division, per nonzero word
  uint64_t regions = 0;
  uint32_t curveIntervals = 0;  // R = 2^(L-1)
  uint64_t sweepWords = 0;      // words whose stamps the sweep visits per push
  uint64_t sweepCursor = 0;
  uint64_t now = 0;  // intervals pushed; interval numbers start at 1
  uint64_t windowDirty = 0;
  uint64_t windowStart = 1;  // first interval of the window
  // Stamp ages (now - stamp mod 2^16), see analyzer.h "Window": young below R, natural old
  // below oldOut, then the clamped classes "old, outside the window" [oldOut, oldOut + P] and
  // "old, in the window" [oldIn, oldIn + P], P = the sweep period bound.
  uint16_t oldOut = 0;
  uint16_t oldIn = 0;
  /** Ages up to this are natural ages of pages dirtied since the window started (see analyzer.h). */
  uint16_t WindowAgeLimit() const {
    const uint64_t windowAge = now - windowStart;
    return static_cast<uint16_t>(windowAge < oldOut ? windowAge : oldOut - 1);
  }
  /** Whether a page of stamp age `age` was dirtied since the window started (age >= 1). */
  bool InWindow(uint16_t age) const { return age <= WindowAgeLimit() || age >= oldIn; }
  uint32_t threads = 1;  // of a push
  // The guest's words in segments of segmentWords (a multiple of regionWords, so no region
  // straddles two): the threads of a push claim segments in order from nextSegment, so a thread
  // that starts late (the other CPU busy) only takes fewer. Each segment has its own ring lists.
  uint64_t segmentWords = 0;
  uint32_t segments = 1;
  std::atomic<uint32_t> nextSegment{0};

  uint16_t* stamps = nullptr;  // words * 64: interval (mod 2^16) each page was last dirtied
  size_t stampsBytes = 0;
  std::vector<uint32_t> region;  // regions: dirty pages in the last interval
  std::vector<uint64_t> curve;   // R: pages last dirtied at interval t, at t mod R
  std::vector<RingSlot> ring;    // K * segments: segment j of interval t at (t mod K) * segments + j
  std::vector<ThreadContext> thread;
  std::unique_ptr<Worker> worker;  // threads > 1 only
  PushTraffic traffic{};

  AnalyzerState() = default;
  AnalyzerState(const AnalyzerState&) = delete;
  AnalyzerState& operator=(const AnalyzerState&) = delete;
  ~AnalyzerState();

  uint16_t* Stamps(uint64_t word) const { return stamps + word * 64; }
  RingSlot& Slot(uint64_t interval, uint32_t segment) { return ring[(interval % config.heatIntervals) * segments + segment]; }
  uint64_t SegmentBegin(uint32_t segment) const { return segment * segmentWords; }
  uint64_t SegmentEnd(uint32_t segment) const { return std::min(words, (segment + uint64_t{1}) * segmentWords); }
};

/** Slack after a scan's entries: scans write a few entries past the count (branch-free). */
constexpr size_t kScanSlack = 8;

/**
 * The level-specific halves of the pass. Scan: the nonzero words of [begin, end) (the last
 * word masked to `pages`) into `out`, adding their popcounts to s.region; returns how many (out
 * holds end - begin + kScanSlack entries). Process: applies n work entries (newly-dirty
 * count, stamps, curve counts in `curve`), appending them to `out` (capacity reserved by the caller).
 */
struct PassOps {
  size_t (*scan)(AnalyzerState& s, const uint8_t* bitmap, uint64_t begin, uint64_t end, Work* out);
  void (*process)(const AnalyzerState& s, uint64_t* curve, const Work* work, size_t n, RingSlot& out,
                  PassTotals& totals);
};

const PassOps& ScalarPassOps();
const PassOps& Avx2PassOps();

}  // namespace dpa::bitmap::detail
