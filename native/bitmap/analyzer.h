// Per-guest dirty-page analysis, one fused pass per interval (no Node headers, no syscalls
// except an madvise(MADV_HUGEPAGE) hint on the stamp array).
//
// Push(bitmap) streams the interval's bitmap once, in steps of 256 words, each step
// prefetching the bitmap two steps ahead into L2: zero words are skipped (8 at a time with
// AVX2); every nonzero word found is queued, its state lines are prefetched into L2, and the
// queue is processed 48 nonzero words behind the scan, when those lines have arrived. Each word
// updates, in one step: the dirty and region counts, the newly-dirty count, the dirty curve,
// and the heat ring (the word is appended to the interval's list). The only per-page state is a 16-bit stamp (below), so a nonzero word
// touches exactly its 128 bytes of stamps (2 cache lines) plus a sequential 12-byte ring entry;
// nothing is touched for zero words or for the interval leaving the heat window. The pass is
// bound by these scattered line accesses and the bitmap stream, not by arithmetic.
//
// Large guests (from kParallelMinPages = 16 GiB, on a host with 2+ CPUs; or when
// AnalyzerConfig::threads says so) split the push in two halves at a region boundary: the upper
// half runs on a persistent worker thread with its own ring lists and a private curve-delta
// array, added to the curve counts after the join (exact: the counts are sums).
//
// Heat: heat[p] = intervals among the last K in which page p was dirty. It is not kept per
// page: it is read at display rate, while the push runs every interval. The last K intervals
// are kept as sparse lists of (word index, word) of their nonzero words (one list per part), so
// evicting interval now-K is free (its list is reused), and Heat(page) is K binary searches.
// HeatHistogram() walks the K lists together in chunks of 1024 words, adding each entry into
// bit-sliced per-word counters, and counts each touched word's lanes in groups of equal heat:
// O(ring entries), about 20 ms for a 1 TiB guest with 2% of pages dirty and K = 16.
//
// Dirty curve: D(w) = distinct pages dirtied in the last w intervals, w = 1, 2, 4 .. R =
// 2^(L-1). Each page keeps the interval it was last dirtied in, as a 16-bit stamp (interval
// number mod 2^16), and curve[t mod R] counts the pages whose last dirtying was interval t.
// Dirtying page p at interval `now` moves it from its old stamp's count (if that stamp is
// still within R intervals) to now's; D(w) is the sum of the newest w counts: O(R) per query
// whatever the guest size, and the pass's work is proportional to the dirty words, never to
// the window length. Set lanes sharing one old stamp (clustered writes) cost one subtraction.
//
// Window (newlyDirtyInWindow, windowDirtyPages): whether a page was dirtied since the window
// started is read from its stamp too, so it costs no memory access of its own. With the stamp's
// age a = now - stamp (mod 2^16) and a sweep visiting every word at least every P = (2^16 - 2
// - R) / 3 pushes (ceil(words / P) words per push, 385 for a 1 TiB guest at L = 16), the ages
// fall in four disjoint ranges:
//   a < R                    young: the true age (counted in the curve)
//   R <= a < R + P           old, never clamped since dirtied: still the true age
//   [oldOut, oldOut + P]     clamped, dirtied before the window: oldOut = R + P
//   [oldIn, oldIn + P]       clamped, dirtied in the window: oldIn = R + 2P + 1 (<= 2^16 - 1 - P)
// The sweep clamps every stamp at least R old to age oldIn or oldOut (by its true age, or
// keeping its class), so no age ever reaches 2^16 and wraps. A page is in the window when its
// true age is at most now - windowStart, or its class is "in". ResetWindow() moves windowStart
// and rewrites class "in" as "out" (O(pages), once per migration).
//
// Memory (fixed, per GiB of guest = 262144 pages = 4096 words): 4096 * 128 B = 512 KiB (2
// bytes per 4 KiB page, 0.49% of guest RAM), plus 4 bytes per region, 8 * R bytes of curve
// (twice with two threads) and 32 KiB of prefetch queue per thread. Heat ring: 12 bytes per
// nonzero word per held interval (K slots), at most K * 48 KiB per GiB when every page is dirty
// every interval; a 2% clustered load needs about 3.5% of that. Ring arrays keep their
// capacity (the high-water mark), reported by MemoryBytes().
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
  uint32_t threads = 0;    // threads of a push: 0 = automatic (see ThreadsFor), 1 or 2
};

struct PushResult {
  uint64_t dirtyPages;          // set bits in this interval's bitmap
  uint64_t newlyDirtyInWindow;  // of those, pages not yet dirty since the window started
  uint64_t windowDirtyPages;    // distinct pages dirty since the window started (ResetWindow)
};

/**
 * What the last Push read and wrote, in data bytes (whole cache lines but for the ring and the
 * regions, which are sequential): the whole bitmap read; per set word (nonzero in the new
 * bitmap) its 128 B of stamps read and written plus a 12 B ring entry written; 4 B per region
 * written; 128 B of stamps read and written per swept word. The curve counters (L1-resident, R
 * entries) are not counted.
 */
struct PushTraffic {
  uint64_t readBytes = 0;
  uint64_t writeBytes = 0;
  uint64_t nonzeroWords = 0;  // words of the new bitmap with a page set
  uint64_t evictedWords = 0;  // ring entries of interval now - K (dropped, not read)
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
  static constexpr uint32_t kMaxThreads = 2;
  /** From this guest size (16 GiB) a push runs on two threads when the host has 2+ CPUs. */
  static constexpr uint64_t kParallelMinPages = uint64_t{16} << 18;

  /** Throws std::out_of_range naming the bad field. */
  static void Validate(const AnalyzerConfig& config);
  static AnalyzerMemory MemoryFor(const AnalyzerConfig& config);
  /** Threads a push of an analyzer with this config uses (resolves threads = 0). */
  static uint32_t ThreadsFor(const AnalyzerConfig& config);

  explicit Analyzer(const AnalyzerConfig& config);  // std::out_of_range, std::bad_alloc
  ~Analyzer();
  Analyzer(const Analyzer&) = delete;
  Analyzer& operator=(const Analyzer&) = delete;

  /** One interval; bitmap holds at least BitmapBytes(pages) bytes. */
  PushResult Push(const uint8_t* bitmap) { return Push(bitmap, ActiveLevel()); }
  PushResult Push(const uint8_t* bitmap, SimdLevel level);

  /** Dirty pages per region in the last pushed interval (zeros before the first). */
  void RegionHistogram(uint32_t* out) const;
  /** out[h], h = 0..K: pages whose heat is h. Computed from the ring: O(ring entries). */
  void HeatHistogram(uint64_t* out) const;
  /** O(K log n): K binary searches in the ring lists. */
  uint32_t Heat(uint64_t page) const;
  /** out[j], j = 0..L-1: D(2^j), over the intervals pushed so far if fewer. */
  void DirtyCurve(uint64_t* out) const;
  /** Starts a new window for newlyDirtyInWindow / windowDirtyPages (heat and curve unaffected); O(pages). */
  void ResetWindow();

  uint64_t MemoryBytes() const;
  uint64_t Intervals() const;
  uint64_t RegionCount() const;
  uint32_t Threads() const;
  const AnalyzerConfig& Config() const;
  const PushTraffic& LastTraffic() const;

  /**
   * Benchmark yardstick, not analysis: replays the memory access pattern of the last Push
   * without its arithmetic, on as many threads: reads all of `bitmap` (BitmapBytes(pages)) chunk
   * by chunk and, with the same prefetch distance, reads and rewrites unchanged every state
   * line the push touched (2 stamp lines per set word) and the new ring entries. The time it takes is what the push's scattered accesses alone cost on this machine.
   * Returns a checksum (so nothing is optimised away). State is left as it was.
   */
  uint64_t ReplayLastPattern(const uint8_t* bitmap);

 private:
  std::unique_ptr<detail::AnalyzerState> state_;
};

/**
 * The memory-speed yardstick of the benchmark (Kernels::stream) on `threads` (1 or 2) threads:
 * with 2, the upper halves of src and dst go to a persistent worker thread, as the upper half
 * of a two-thread push does, so the comparison uses the same parallelism. Returns a checksum.
 */
uint64_t StreamOnThreads(const uint8_t* src, size_t srcBytes, uint8_t* dst, size_t dstBytes, uint32_t threads);

}  // namespace dpa::bitmap
