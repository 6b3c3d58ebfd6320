// The Analyzer's state and the per-level parts of its pass (internal to native/bitmap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "bitmap/analyzer.h"

namespace dpa::bitmap::detail {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Array = std::unique_ptr<T[], FreeDeleter>;

/**
 * Per 64-page word, its pages' state in one 192-byte block (three cache lines): 64 heat bytes,
 * then 64 u16 stamps. One block per word instead of distant arrays keeps a word's state in
 * adjacent lines: the pass is bound by scattered cache-line misses, so lines per dirty word is
 * what matters. A heat byte holds the heat in its low 7 bits (0 .. 64) and the page's window
 * bit (dirty since the window started) in its top bit: the window needs no array of its own,
 * and its 64 bits of a word are two movemasks of the heat vectors.
 */
constexpr uint8_t kHeatMask = 0x7F;
constexpr uint8_t kWindowBit = 0x80;
constexpr uint64_t kBlockBytes = 192;
constexpr uint64_t kStampOffset = 64;

/** The nonzero words of one interval in ascending word order, kept while it is in the heat window. */
struct RingSlot {
  Array<uint32_t> index;
  Array<uint64_t> word;
  size_t size = 0;
  size_t capacity = 0;
  /** Grows (geometrically) to hold at least n entries; existing entries are kept. */
  void Reserve(size_t n);
};

/** One word to update: its pages dirtied in the new interval, and those leaving the heat window. */
struct Work {
  uint64_t set;      // dirty in the new interval
  uint64_t cleared;  // dirty in interval now - K (being evicted)
  uint32_t index;    // word index
};

struct AnalyzerState {
  AnalyzerConfig config{};
  uint64_t words = 0;      // ceil(pages / 64)
  uint64_t fullWords = 0;  // pages / 64
  uint64_t tailPages = 0;  // pages % 64
  uint64_t regionWords = 0;
  uint64_t regions = 0;
  uint32_t curveIntervals = 0;  // R = 2^(L-1)
  uint64_t sweepWords = 0;      // words whose stamps the sweep visits per push
  uint64_t sweepCursor = 0;
  uint64_t now = 0;  // intervals pushed; interval numbers start at 1
  uint64_t windowDirty = 0;

  uint8_t* blocks = nullptr;    // words * kBlockBytes (heat, stamps), see kBlockBytes
  size_t blocksBytes = 0;
  std::vector<uint32_t> region;         // regions: dirty pages in the last interval
  // heatAtLeast[h] = pages whose heat is >= h, h = 0 .. K + 1 (so [0] = pages, [K + 1] = 0):
  // moving a group of pages from heat v to v + 1 is one update (heatAtLeast[v + 1] += n)
  // instead of two histogram bins, and the histogram is its difference.
  std::vector<uint64_t> heatAtLeast;
  std::vector<uint64_t> curve;          // R: pages last dirtied at interval t, at t mod R
  std::vector<RingSlot> ring;           // K: interval t at t mod K
  RingSlot spare;                       // receives the new interval while its slot is evicted
  std::vector<std::vector<Work>> work;  // the pass's work lists: queued, scanned, merged
  PushTraffic traffic{};

  AnalyzerState() = default;
  AnalyzerState(const AnalyzerState&) = delete;
  AnalyzerState& operator=(const AnalyzerState&) = delete;
  ~AnalyzerState();

  uint8_t* Heat(uint64_t word) const { return blocks + word * kBlockBytes; }
  uint16_t* Stamps(uint64_t word) const {
    return reinterpret_cast<uint16_t*>(blocks + word * kBlockBytes + kStampOffset);
  }
};

/** Counts of one pass, for PushResult and PushTraffic. */
struct PassTotals {
  uint64_t dirty = 0;
  uint64_t newly = 0;
  uint64_t setWords = 0;        // words dirty in the new interval
  uint64_t evictOnlyWords = 0;  // evicted words not dirty in the new interval
};

/** Slack after a scan's entries: scans write a few entries past the count (branch-free). */
constexpr size_t kScanSlack = 8;

/**
 * The level-specific halves of the pass. Scan: the nonzero words of [begin, end) (the last
 * word masked to `pages`) into `out` as {set = word, cleared = 0}, adding their popcounts to
 * s.region; returns how many (out holds end - begin + kScanSlack entries).
 * Process: applies n work entries (heat, its histogram, window bits, stamps, curve), appending the
 * set words to `out` (capacity reserved by the caller).
 */
struct PassOps {
  size_t (*scan)(AnalyzerState& s, const uint8_t* bitmap, uint64_t begin, uint64_t end, Work* out);
  void (*process)(AnalyzerState& s, const Work* work, size_t n, RingSlot& out, PassTotals& totals);
};

const PassOps& ScalarPassOps();
const PassOps& Avx2PassOps();

}  // namespace dpa::bitmap::detail
