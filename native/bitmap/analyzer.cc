// Analyzer: construction, the level-independent part of a push (interval bookkeeping, stamp
// sweep, traffic accounting), the scalar pass, and the queries. See analyzer.h for the design.
#include "bitmap/analyzer.h"

#include <sys/mman.h>

#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "bitmap/analyzer_state.h"
#include "bitmap/words.h"

namespace dpa::bitmap {
namespace detail {
namespace {

// Per-word data bytes of the pass (see PushTraffic): a set word reads and writes its 64 heat
// bytes (window bits included) and 128 bytes of stamps and appends a 12-byte ring entry; an
// evicted entry is read from the ring, and an evicted word not also set has its heat bytes
// read and written.
constexpr uint64_t kSetReadBytes = 64 + 128;
constexpr uint64_t kSetWriteBytes = 64 + 128 + 12;
constexpr uint64_t kEvictReadBytes = 12;
constexpr uint64_t kEvictOnlyBytes = 64;
constexpr uint64_t kSweepWordBytes = 128;

// Words scanned per step of the pass. The state of one step's words is prefetched while the
// previous step's are processed: enough lines in flight to hide DRAM latency, few enough
// (about 3 per nonzero word) to stay in L1/L2 until used.
constexpr uint64_t kChunkWords = 128;
constexpr int kWorkLists = 3;

template <typename T>
Array<T> Allocate(uint64_t count) {
  void* p = std::malloc(count ? count * sizeof(T) : 1);
  if (!p) throw std::bad_alloc();
  return Array<T>(static_cast<T*>(p));
}

// The block array is the large one (192 bytes per 64 pages: 600 MiB for a 4 TiB guest) and is
// accessed at scattered words: 2 MiB alignment plus MADV_HUGEPAGE lets the kernel back it with
// huge pages (THP "madvise" mode), cutting TLB misses. The hint may be refused; that only costs speed.
uint8_t* AllocateBlocks(size_t bytes, size_t* allocated) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t align = bytes >= kHugePage ? kHugePage : 64;
  const size_t rounded = (bytes + align - 1) / align * align;
  void* p = nullptr;
  if (posix_memalign(&p, align, rounded) != 0) throw std::bad_alloc();
  if (align == kHugePage) madvise(p, rounded, MADV_HUGEPAGE);
  *allocated = rounded;
  return static_cast<uint8_t*>(p);
}

size_t ScanScalar(AnalyzerState& s, const uint8_t* bitmap, uint64_t begin, uint64_t end, Work* out) {
  size_t n = 0;
  for (uint64_t i = begin; i < end; i++) {
    const uint64_t w = i < s.fullWords ? LoadWord(bitmap + i * 8) : LoadTail(bitmap + i * 8, s.tailPages);
    if (!w) continue;
    out[n++] = Work{w, 0, static_cast<uint32_t>(i)};
    s.region[i / s.regionWords] += static_cast<uint32_t>(PopcountScalar(w));
  }
  return n;
}

void ProcessScalar(AnalyzerState& s, const Work* work, size_t n, RingSlot& out, PassTotals& t) {
  uint64_t* atLeast = s.heatAtLeast.data();
  uint64_t* curve = s.curve.data();
  const uint16_t now16 = static_cast<uint16_t>(s.now);
  const uint32_t curveMask = s.curveIntervals - 1;
  for (size_t k = 0; k < n; k++) {
    const Work& e = work[k];
    uint8_t* heat = s.Heat(e.index);
    // Heat is the low 7 bits; +-1 never reaches the window bit (heat stays within 0 .. 64).
    for (uint64_t m = e.set & ~e.cleared; m; m &= m - 1) atLeast[(heat[Ctz(m)]++ & kHeatMask) + 1]++;
    for (uint64_t m = e.cleared & ~e.set; m; m &= m - 1) atLeast[heat[Ctz(m)]-- & kHeatMask]--;
    if (!e.set) {
      t.evictOnlyWords++;
      continue;
    }
    out.index[out.size] = e.index;
    out.word[out.size++] = e.set;
    uint16_t* stamp = s.Stamps(e.index);
    for (uint64_t m = e.set; m; m &= m - 1) {
      const unsigned b = Ctz(m);
      t.newly += !(heat[b] & kWindowBit);
      heat[b] = static_cast<uint8_t>(heat[b] | kWindowBit);
      const uint16_t old = stamp[b];
      if (static_cast<uint16_t>(now16 - old) < s.curveIntervals) curve[old & curveMask]--;
      stamp[b] = now16;
    }
    t.dirty += PopcountScalar(e.set);
    t.setWords++;
  }
}

// A prefetch the compiler cannot drop: GCC deletes a loop of nothing but __builtin_prefetch
// calls as free of side effects. prefetcht0 exists on every x86-64.
inline void PrefetchLine(const void* p) { asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p))); }

// Merges a chunk's scanned words with its evicted ring entries (both ascending) into `work`.
size_t Merge(const Work* scanned, size_t found, const RingSlot& evict, size_t e0, size_t e1, Work* work) {
  size_t n = 0, k = 0, e = e0;
  while (k < found && e < e1) {
    const uint32_t ni = scanned[k].index, ei = evict.index[e];
    if (ni < ei) {
      work[n++] = scanned[k++];
    } else if (ei < ni) {
      work[n++] = Work{0, evict.word[e], ei};
      e++;
    } else {
      work[n++] = Work{scanned[k++].set, evict.word[e++], ni};
    }
  }
  for (; k < found; k++) work[n++] = scanned[k];
  for (; e < e1; e++) work[n++] = Work{0, evict.word[e], evict.index[e]};
  return n;
}

// One streaming pass over the bitmap, merged with the (ascending) evicted list, in chunks:
// scan chunk c and prefetch its words' state, then process chunk c - 1 (whose lines arrived
// meanwhile). Three work lists rotate: the pending one, and the scan and merge targets.
// (Measured on the project machine: 128-word chunks beat 32..1024, and prefetching two or
// three chunks ahead gains nothing over one.)
PassTotals RunPass(AnalyzerState& s, const uint8_t* bitmap, const RingSlot& evict, RingSlot& out,
                   const PassOps& ops) {
  PassTotals t;
  size_t e = 0;
  int pending = 2;  // nothing pending yet (pendingCount 0)
  size_t pendingCount = 0;
  for (uint64_t c0 = 0; c0 < s.words; c0 += kChunkWords) {
    const uint64_t c1 = c0 + kChunkWords < s.words ? c0 + kChunkWords : s.words;
    for (uint64_t r = (c0 + s.regionWords - 1) / s.regionWords; r * s.regionWords < c1; r++) s.region[r] = 0;
    const int scanned = (pending + 1) % 3;  // the two lists other than the pending one
    const int merged = (pending + 2) % 3;
    size_t n = ops.scan(s, bitmap, c0, c1, s.work[scanned].data());
    const size_t e0 = e;
    while (e < evict.size && evict.index[e] < c1) e++;
    int current = scanned;
    if (e != e0) {
      n = Merge(s.work[scanned].data(), n, evict, e0, e, s.work[merged].data());
      current = merged;
    }
    const Work* work = s.work[current].data();
    for (size_t k = 0; k < n; k++) {
      // Heat line always; the stamp lines only for set words.
      const uint8_t* block = s.Heat(work[k].index);
      PrefetchLine(block);
      if (work[k].set) {
        PrefetchLine(block + 64);
        PrefetchLine(block + 128);
      }
    }
    if (pendingCount) {
      out.Reserve(out.size + pendingCount);
      ops.process(s, s.work[pending].data(), pendingCount, out, t);
    }
    pending = current;
    pendingCount = n;
  }
  if (pendingCount) {
    out.Reserve(out.size + pendingCount);
    ops.process(s, s.work[pending].data(), pendingCount, out, t);
  }
  return t;
}

// Keeps every stamp's true age below 2^16 (see analyzer.h): a stamp older than R intervals is
// set back to exactly R old, which changes no query (both are outside every curve window).
void Sweep(AnalyzerState& s) {
  const uint16_t now16 = static_cast<uint16_t>(s.now);
  const uint16_t clamped = static_cast<uint16_t>(now16 - s.curveIntervals);
  for (uint64_t k = 0; k < s.sweepWords; k++) {
    uint16_t* stamp = s.Stamps(s.sweepCursor);
    for (unsigned b = 0; b < 64; b++) {
      const uint16_t age = static_cast<uint16_t>(now16 - stamp[b]);
      stamp[b] = age >= s.curveIntervals ? clamped : stamp[b];
    }
    s.sweepCursor = s.sweepCursor + 1 == s.words ? 0 : s.sweepCursor + 1;
  }
}

}  // namespace

void RingSlot::Reserve(size_t n) {
  if (n <= capacity) return;
  const size_t grown = n > 2 * capacity ? n : 2 * capacity;
  Array<uint32_t> newIndex = Allocate<uint32_t>(grown);
  Array<uint64_t> newWord = Allocate<uint64_t>(grown);
  if (size) {
    std::memcpy(newIndex.get(), index.get(), size * sizeof(uint32_t));
    std::memcpy(newWord.get(), word.get(), size * sizeof(uint64_t));
  }
  index = std::move(newIndex);
  word = std::move(newWord);
  capacity = grown;
}

AnalyzerState::~AnalyzerState() { std::free(blocks); }

const PassOps& ScalarPassOps() {
  static const PassOps ops = {ScanScalar, ProcessScalar};
  return ops;
}

}  // namespace detail

using detail::AnalyzerState;

void Analyzer::Validate(const AnalyzerConfig& c) {
  if (c.pages < 1 || c.pages > kMaxPages)
    throw std::out_of_range("pages must be an integer from 1 to " + std::to_string(kMaxPages));
  if (c.heatIntervals < 1 || c.heatIntervals > kMaxHeatIntervals)
    throw std::out_of_range("heatIntervals must be an integer from 1 to 64");
  if (c.curveLevels < 1 || c.curveLevels > kMaxCurveLevels)
    throw std::out_of_range("curveLevels must be an integer from 1 to 16");
  if (!ValidRegionPages(c.regionPages))
    throw std::out_of_range("regionPages must be a power of two from 512 to 262144");
}

AnalyzerMemory Analyzer::MemoryFor(const AnalyzerConfig& c) {
  Validate(c);
  const uint64_t words = (c.pages + 63) / 64;
  const uint64_t regions = bitmap::RegionCount(c.pages, c.regionPages);
  const uint64_t curveIntervals = uint64_t{1} << (c.curveLevels - 1);
  AnalyzerMemory m;
  m.fixedBytes = words * detail::kBlockBytes + regions * 4 + (c.heatIntervals + 2) * 8 + curveIntervals * 8 +
                 (c.heatIntervals + 1) * sizeof(detail::RingSlot) +
                 detail::kWorkLists * (detail::kChunkWords + detail::kScanSlack) * sizeof(detail::Work);
  m.ringBytesMax = uint64_t{c.heatIntervals + 1} * words * (sizeof(uint32_t) + sizeof(uint64_t));
  return m;
}

Analyzer::Analyzer(const AnalyzerConfig& config) : state_(std::make_unique<AnalyzerState>()) {
  Validate(config);
  AnalyzerState& s = *state_;
  s.config = config;
  s.words = (config.pages + 63) / 64;
  s.fullWords = config.pages / 64;
  s.tailPages = config.pages % 64;
  s.regionWords = config.regionPages / 64;
  s.regions = bitmap::RegionCount(config.pages, config.regionPages);
  s.curveIntervals = uint32_t{1} << (config.curveLevels - 1);
  // Each word's stamps must be visited at least every 2^16 - R - 1 pushes (see analyzer.h).
  const uint64_t sweepPeriod = 65536 - uint64_t{s.curveIntervals} - 1;
  s.sweepWords = (s.words + sweepPeriod - 1) / sweepPeriod;

  s.blocks = detail::AllocateBlocks(s.words * detail::kBlockBytes, &s.blocksBytes);
  // Every page starts exactly R intervals old: outside every curve window, like a clamped stamp.
  const uint16_t initial = static_cast<uint16_t>(0 - s.curveIntervals);
  for (uint64_t w = 0; w < s.words; w++) {
    std::memset(s.Heat(w), 0, 64);
    uint16_t* stamp = s.Stamps(w);
    for (unsigned b = 0; b < 64; b++) stamp[b] = initial;
  }
  s.region.assign(s.regions, 0);
  s.heatAtLeast.assign(config.heatIntervals + 2, 0);
  s.heatAtLeast[0] = config.pages;
  s.curve.assign(s.curveIntervals, 0);
  s.ring.resize(config.heatIntervals);
  s.work.resize(detail::kWorkLists);
  for (std::vector<detail::Work>& w : s.work) w.resize(detail::kChunkWords + detail::kScanSlack);
}

Analyzer::~Analyzer() = default;

PushResult Analyzer::Push(const uint8_t* bitmap, SimdLevel level) {
  AnalyzerState& s = *state_;
  s.now++;
  // The curve slot of interval now held interval now - R, which has just left every window.
  s.curve[s.now & (s.curveIntervals - 1)] = 0;
  // The ring slot of interval now holds interval now - K, which leaves the heat window during
  // the pass; the new interval goes to the spare slot, which then takes its place.
  detail::RingSlot& evict = s.ring[s.now % s.config.heatIntervals];
  s.spare.size = 0;
  const detail::PassOps& ops = level == SimdLevel::kAvx2 && CpuHasAvx2() ? detail::Avx2PassOps() : detail::ScalarPassOps();
  const detail::PassTotals t = detail::RunPass(s, bitmap, evict, s.spare, ops);
  const uint64_t evicted = evict.size;
  std::swap(evict, s.spare);
  s.curve[s.now & (s.curveIntervals - 1)] = t.dirty;
  s.windowDirty += t.newly;
  detail::Sweep(s);

  PushTraffic& tr = s.traffic;
  tr.nonzeroWords = t.setWords;
  tr.evictedWords = evicted;
  tr.sweptWords = s.sweepWords;
  tr.readBytes = BitmapBytes(s.config.pages) + t.setWords * detail::kSetReadBytes + evicted * detail::kEvictReadBytes +
                 t.evictOnlyWords * detail::kEvictOnlyBytes + s.sweepWords * detail::kSweepWordBytes;
  tr.writeBytes = t.setWords * detail::kSetWriteBytes + t.evictOnlyWords * detail::kEvictOnlyBytes + s.regions * 4 +
                  s.sweepWords * detail::kSweepWordBytes;
  return {t.dirty, t.newly, s.windowDirty};
}

void Analyzer::RegionHistogram(uint32_t* out) const {
  std::memcpy(out, state_->region.data(), state_->regions * sizeof(uint32_t));
}

void Analyzer::HeatHistogram(uint64_t* out) const {
  const uint64_t* atLeast = state_->heatAtLeast.data();
  for (uint32_t h = 0; h <= state_->config.heatIntervals; h++) out[h] = atLeast[h] - atLeast[h + 1];
}

uint32_t Analyzer::Heat(uint64_t page) const {
  if (page >= state_->config.pages) throw std::out_of_range("page must be below pages");
  return state_->Heat(page / 64)[page % 64] & detail::kHeatMask;
}

void Analyzer::DirtyCurve(uint64_t* out) const {
  const AnalyzerState& s = *state_;
  const uint32_t mask = s.curveIntervals - 1;
  uint64_t sum = 0;
  uint32_t level = 0;
  // Slots of intervals not pushed yet (now - age < 1) are still zero, so no clamp is needed.
  for (uint64_t age = 0; age < s.curveIntervals; age++) {
    sum += s.curve[(s.now - age) & mask];
    if (age + 1 == uint64_t{1} << level) out[level++] = sum;
  }
}

void Analyzer::ResetWindow() {
  // O(pages): clears the window bit of every heat byte (a reset is rare: a new migration).
  for (uint64_t w = 0; w < state_->words; w++) {
    uint8_t* heat = state_->Heat(w);
    for (unsigned b = 0; b < 64; b++) heat[b] = static_cast<uint8_t>(heat[b] & detail::kHeatMask);
  }
  state_->windowDirty = 0;
}

uint64_t Analyzer::MemoryBytes() const {
  const AnalyzerState& s = *state_;
  uint64_t ring = s.spare.capacity * (sizeof(uint32_t) + sizeof(uint64_t));
  for (const detail::RingSlot& slot : s.ring) ring += slot.capacity * (sizeof(uint32_t) + sizeof(uint64_t));
  return MemoryFor(s.config).fixedBytes + (s.blocksBytes - s.words * detail::kBlockBytes) + ring;
}

uint64_t Analyzer::ReplayLastPattern(const uint8_t* bitmap) {
  AnalyzerState& s = *state_;
  uint64_t sum = KernelsFor(ActiveLevel()).stream(bitmap, BitmapBytes(s.config.pages), nullptr, 0);
  // After a push, the slot of interval now holds its set words and `spare` the evicted ones.
  detail::RingSlot& set = s.ring[s.now % s.config.heatIntervals];
  const detail::RingSlot& evicted = s.spare;
  auto touch = [&sum](void* line) {
    uint64_t* q = static_cast<uint64_t*>(line);
    uint64_t v = *q;
    asm volatile("" : "+r"(v));  // a real read and write of the line, value unchanged
    *q = v;
    sum += v;
  };
  // The pass's structure without its arithmetic: chunks of words, the chunk's entries
  // prefetched while the previous chunk's are touched.
  size_t i = 0, e = 0, pendingCount = 0;
  int pending = 2;
  for (uint64_t c0 = 0; c0 < s.words; c0 += detail::kChunkWords) {
    const uint64_t c1 = c0 + detail::kChunkWords;
    const int current = (pending + 1) % 3;
    detail::Work* work = s.work[current].data();
    size_t n = 0;
    while ((i < set.size && set.index[i] < c1) || (e < evicted.size && evicted.index[e] < c1)) {
      const uint64_t si = i < set.size ? set.index[i] : UINT64_MAX;
      const uint64_t ei = e < evicted.size ? evicted.index[e] : UINT64_MAX;
      sum += e < evicted.size ? evicted.word[e] : 0;
      if (si <= ei) {
        work[n++] = detail::Work{set.word[i], 0, static_cast<uint32_t>(si)};
        i++;
        if (si == ei) e++;
      } else {
        work[n++] = detail::Work{0, evicted.word[e], static_cast<uint32_t>(ei)};
        e++;
      }
    }
    for (size_t k = 0; k < n; k++) {
      uint8_t* block = s.Heat(work[k].index);
      detail::PrefetchLine(block);
      if (work[k].set) {
        detail::PrefetchLine(block + 64);
        detail::PrefetchLine(block + 128);
      }
    }
    const detail::Work* previous = s.work[pending].data();
    for (size_t k = 0; k < pendingCount; k++) {
      uint8_t* block = s.Heat(previous[k].index);
      touch(block);
      if (previous[k].set) {
        touch(block + 64);
        touch(block + 128);
      }
    }
    pending = current;
    pendingCount = n;
  }
  const detail::Work* previous = s.work[pending].data();
  for (size_t k = 0; k < pendingCount; k++) {
    uint8_t* block = s.Heat(previous[k].index);
    touch(block);
    if (previous[k].set) {
      touch(block + 64);
      touch(block + 128);
    }
  }
  // The new ring entries are written by the pass: rewrite them.
  for (size_t k = 0; k < set.size; k++) {
    uint64_t w = set.word[k];
    uint32_t x = set.index[k];
    asm volatile("" : "+r"(w), "+r"(x));
    set.word[k] = w;
    set.index[k] = x;
  }
  return sum;
}

uint64_t Analyzer::Intervals() const { return state_->now; }
uint64_t Analyzer::RegionCount() const { return state_->regions; }
const AnalyzerConfig& Analyzer::Config() const { return state_->config; }
const PushTraffic& Analyzer::LastTraffic() const { return state_->traffic; }

}  // namespace dpa::bitmap
