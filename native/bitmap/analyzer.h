// Per-guest dirty-page analysis, one fused pass per interval (no Node headers, no syscalls
// except an madvise(MADV_HUGEPAGE) hint on the state array).
//
// Push(bitmap) streams the interval's bitmap once, in chunks of 128 words: zero words are
// skipped (8 at a time with AVX2), the chunk's nonzero words are merged with the ring entries
// of the interval leaving the heat window (both lists ascend), their state lines are
// prefetched, and the previous chunk's words are processed meanwhile. Each word updates, in
// one step: the dirty and region counts, the window bits and newly-dirty count, heat (and its
// histogram) for pages entering and leaving the heat window, and the dirty curve. State is
// touched only for nonzero and evicted words.
//
// State layout: per 64-page word one 192-byte block (3 cache lines): 64 heat bytes (heat in
// the low 7 bits, the page's window bit in the top bit) and 64 u16 stamps. The pass is bound
// by these scattered line accesses (a set word touches 3 lines, an evicted-only word 1), not
// by arithmetic.
//
// Heat: heat[p] = intervals among the last K in which page p was dirty. The last K intervals
// are kept as sparse lists of (word index, word) of their nonzero words, so evicting interval
// now-K costs only its nonzero words. The heat histogram is kept incrementally as counts of
// pages with heat >= h: the set lanes of a word are grouped by equal heat (one vector compare
// per distinct value, usually one or two per word) and each group is one counter update.
//
// Dirty curve: D(w) = distinct pages dirtied in the last w intervals, w = 1, 2, 4 .. R =
// 2^(L-1). Each page keeps the interval it was last dirtied in, as a 16-bit stamp (interval
// number mod 2^16), and curve[t mod R] counts the pages whose last dirtying was interval t.
// Dirtying page p at interval `now` moves it from its old stamp's count (if that stamp is
// still within R intervals) to now's; D(w) is the sum of the newest w counts: O(R) per query
// whatever the guest size, and the pass's work is proportional to the dirty words, never to
// the window length. Set lanes sharing one old stamp (clustered writes) cost one subtraction.
// 16-bit stamps instead of 32-bit halve the largest array; to keep them unambiguous, a sweep
// clamps stamps older than R intervals to exactly R intervals old, visiting every word at least
// once every 2^16 - R - 1 intervals: ceil(words / 32767) words per push at most (128 words of
// a 1 TiB guest).
//
// Memory (fixed, per GiB of guest = 262144 pages = 4096 words): 4096 * 192 B = 768 KiB (3
// bytes per 4 KiB page, 0.75% of guest RAM), plus 4 bytes per region, 8 * R bytes of curve and
// ~10 KiB of pass work lists. Heat ring: 12 bytes per nonzero word per held interval (K + 1
// slots, one receiving the new interval during eviction), at most (K + 1) * 48 KiB per GiB
// when every page is dirty every interval; a 2% clustered load needs about 3.5% of that.
// Ring arrays keep their capacity (the high-water mark), reported by MemoryBytes().
#pragma once
#include <cstdint>
#include <memory>

#include "bitmap/bitmap.h"

namespace dpa::bitmap {

struct AnalyzerConfig {
  uint64_t pages;          // 1 .. kMaxPages
  uint32_t heatIntervals;  // K: 1 .. 64
  uint32_t curveLevels;    // L: 1 .. 16, windows 1, 2, 4 .. 2^(L-1) intervals
  uint32_t regionPages;    // power of two, kMinRegionPages .. kMaxRegionPages
};

struct PushResult {
  uint64_t dirtyPages;          // set bits in this interval's bitmap
  uint64_t newlyDirtyInWindow;  // of those, pages not yet dirty since the window started
  uint64_t windowDirtyPages;    // distinct pages dirty since the window started (ResetWindow)
};

/**
 * What the last Push read and wrote, in data bytes (here equal to whole cache lines): the
 * whole bitmap read; per set word (nonzero in the new bitmap) its 64 B of heat and window bits
 * and 128 B of stamps read and written plus a 12 B ring entry written; per evicted ring entry 12 B read, and
 * for an evicted word not also set its 64 B of heat read and written; 4 B per region written;
 * 128 B of stamps read and written per swept word. The histogram and curve counters
 * (L1-resident, K + 2 and R entries) are not counted.
 */
struct PushTraffic {
  uint64_t readBytes = 0;
  uint64_t writeBytes = 0;
  uint64_t nonzeroWords = 0;  // words of the new bitmap with a page set
  uint64_t evictedWords = 0;  // ring entries of interval now - K
  uint64_t sweptWords = 0;
};

struct AnalyzerMemory {
  uint64_t fixedBytes;    // allocated at construction
  uint64_t ringBytesMax;  // heat ring if every word of every held interval were nonzero
};

namespace detail {
struct AnalyzerState;
}

class Analyzer {
 public:
  static constexpr uint32_t kMaxHeatIntervals = 64;
  static constexpr uint32_t kMaxCurveLevels = 16;

  /** Throws std::out_of_range naming the bad field. */
  static void Validate(const AnalyzerConfig& config);
  static AnalyzerMemory MemoryFor(const AnalyzerConfig& config);

  explicit Analyzer(const AnalyzerConfig& config);  // std::out_of_range, std::bad_alloc
  ~Analyzer();
  Analyzer(const Analyzer&) = delete;
  Analyzer& operator=(const Analyzer&) = delete;

  /** One interval; bitmap holds at least BitmapBytes(pages) bytes. */
  PushResult Push(const uint8_t* bitmap) { return Push(bitmap, ActiveLevel()); }
  PushResult Push(const uint8_t* bitmap, SimdLevel level);

  /** Dirty pages per region in the last pushed interval (zeros before the first). */
  void RegionHistogram(uint32_t* out) const;
  /** out[h], h = 0..K: pages whose heat is h. */
  void HeatHistogram(uint64_t* out) const;
  uint32_t Heat(uint64_t page) const;
  /** out[j], j = 0..L-1: D(2^j), over the intervals pushed so far if fewer. */
  void DirtyCurve(uint64_t* out) const;
  /** Starts a new window for newlyDirtyInWindow / windowDirtyPages (heat and curve unaffected). */
  void ResetWindow();

  uint64_t MemoryBytes() const;
  uint64_t Intervals() const;
  uint64_t RegionCount() const;
  const AnalyzerConfig& Config() const;
  const PushTraffic& LastTraffic() const;

  /**
   * Benchmark yardstick, not analysis: replays the memory access pattern of the last Push
   * without its arithmetic. Reads all of `bitmap` (BitmapBytes(pages)), then in ascending word
   * order reads and rewrites unchanged every state line the push touched (3 per set word, 1 per
   * evicted-only word; same prefetching), reads the evicted ring entries and rewrites the new
   * ones. The time it takes is what the push's scattered accesses alone cost on this machine.
   * Returns a checksum (so nothing is optimised away). State is left as it was.
   */
  uint64_t ReplayLastPattern(const uint8_t* bitmap);

 private:
  std::unique_ptr<detail::AnalyzerState> state_;
};

}  // namespace dpa::bitmap
