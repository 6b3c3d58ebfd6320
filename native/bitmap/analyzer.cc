// Analyzer: construction, the level-independent part of a push (interval bookkeeping, the
// prefetching queue, the split over two threads, stamp sweep, traffic accounting), the scalar
// pass, and the queries (heat computed on demand from the ring). See analyzer.h for the design.
#include "bitmap/analyzer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "bitmap/analyzer_state.h"
#include "bitmap/words.h"

namespace dpa::bitmap {
namespace detail {
namespace {

// Per set word data bytes of the pass (see PushTraffic): its 128 bytes of stamps read and
// written, and a 12-byte ring entry written.
constexpr uint64_t kSetReadBytes = 128;
constexpr uint64_t kSetWriteBytes = 128 + 12;
constexpr uint64_t kSweepWordBytes = 128;
constexpr uint64_t kStampBytesPerWord = 128;

// Words scanned per step (a multiple of the AVX2 scan's groups of 8): the step's nonzero words
// have their state lines prefetched together, then the queue is processed up to its newest
// kLagWords entries, whose lines are still on their way. Counting the lag in nonzero words keeps
// the lines in flight steady whatever the load. Measured on the project machine (1 TiB, 2%
// dirty): 256-word steps beat 128 and 512..4096 by 2-15%; the lag made no difference from 16 to
// 256 words (48 slightly ahead of 24 once the bitmap is prefetched too); prefetching each word's
// lines a fixed distance ahead while processing, instead of per step, was 10-20% slower.
constexpr uint64_t kChunkWords = 256;
constexpr size_t kLagWords = 48;
// Each step also prefetches the bitmap words kBitmapAheadWords ahead of it into L2 (one step's
// worth, 2 KiB): with the hardware stream prefetcher alone the scan waited on the bitmap
// (likely because it stops at 4 KiB pages, the bitmap being a JavaScript buffer, and gets no
// demand misses to follow while a step's words are processed; no counters here to confirm). Measured (C++ harness, 1 TiB, cold caches, old and new builds
// alternated 6 times, each push paired with the streaming loop; see docs/BENCHMARKS.md): median
// CPU time per push 5.16 -> 4.60 ms on 1 thread, 5.44 -> 4.92 on 2; median paired ratio 0.72
// -> 0.79 and 0.54 -> 0.81. 1 or 4 steps ahead: about the same; prefetcht0 or prefetchnta
// instead of prefetcht1: worse.
constexpr uint64_t kBitmapAheadWords = 2 * kChunkWords;
constexpr size_t kQueueEntries = 2048;  // >= kLagWords + kChunkWords + kScanSlack; memmoves are rare

template <typename T>
Array<T> Allocate(uint64_t count) {
  void* p = std::malloc(count ? count * sizeof(T) : 1);
  if (!p) throw std::bad_alloc();
  return Array<T>(static_cast<T*>(p));
}

// The stamp array is the large one (128 bytes per 64 pages: 512 MiB for a 4 TiB guest) and is
// accessed at scattered words: 2 MiB alignment plus MADV_HUGEPAGE lets the kernel back it with
// huge pages (THP "madvise" mode), cutting TLB misses. The hint may be refused; that only costs speed.
uint8_t* AllocateHuge(size_t bytes, size_t* allocated) {
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
    out[n++] = Work{w, static_cast<uint32_t>(i)};
    s.region[i >> s.regionShift] += static_cast<uint32_t>(PopcountScalar(w));
  }
  return n;
}

void ProcessScalar(const AnalyzerState& s, uint64_t* curve, const Work* work, size_t n, RingSlot& out,
                   PassTotals& t) {
  const uint16_t now16 = static_cast<uint16_t>(s.now);
  const uint32_t curveMask = s.curveIntervals - 1;
  for (size_t k = 0; k < n; k++) {
    const Work& e = work[k];
    out.index[out.size] = e.index;
    out.word[out.size++] = e.set;
    uint16_t* stamp = s.Stamps(e.index);
    for (uint64_t m = e.set; m; m &= m - 1) {
      const unsigned b = Ctz(m);
      const uint16_t old = stamp[b];
      const uint16_t age = static_cast<uint16_t>(now16 - old);
      curve[old & curveMask] -= age < s.curveIntervals;
      t.newly += !s.InWindow(age);
      stamp[b] = now16;
    }
    t.dirty += PopcountScalar(e.set);
  }
  t.setWords += n;
}

// Prefetches the compiler cannot drop: GCC deletes a loop of nothing but __builtin_prefetch
// calls as free of side effects. prefetcht1 exists on every x86-64.

// Prefetches into L2 (prefetcht1), not L1: measured on the project machine (C++ harness, 1 TiB,
// 206k nonzero words), a push took 10.6 ms with prefetcht0 and 7.9 ms with prefetcht1
// (prefetchw: no gain). The L1's
// few miss buffers cap the lines in flight; the L2 tracks many more, and a line is read from L2
// a few hundred cycles later at little cost.
inline void PrefetchL2(const void* p) { asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p))); }

inline void PrefetchWordState(const AnalyzerState& s, uint32_t index) {
  const uint16_t* stamp = s.Stamps(index);
  PrefetchL2(stamp);
  PrefetchL2(stamp + 32);
}

/** Prefetches the step of bitmap words starting kBitmapAheadWords after `c0` (whole words of the bitmap only). */
inline void PrefetchBitmapAhead(const AnalyzerState& s, const uint8_t* bitmap, uint64_t c0, uint64_t end) {
  const uint64_t stop = std::min({c0 + kBitmapAheadWords + kChunkWords, end, s.fullWords});
  for (uint64_t q = c0 + kBitmapAheadWords; q < stop; q += 8) PrefetchL2(bitmap + q * 8);
}

// One segment of the pass: one streaming scan of its bitmap words, in steps, each prefetching
// the bitmap two steps ahead; every nonzero word found is queued and its state lines
// prefetched, and the queue is processed up to its newest kLagWords entries, whose lines are
// still on their way.
void RunSegment(AnalyzerState& s, ThreadContext& ctx, uint32_t segment, const uint8_t* bitmap, const PassOps& ops) {
  RingSlot& out = s.Slot(s.now, segment);
  Work* queue = ctx.work.data();
  size_t head = 0, tail = 0;
  auto drain = [&](size_t upTo) {
    const size_t n = upTo - head;
    if (!n) return;
    out.Reserve(out.size + n);
    ops.process(s, ctx.curve, queue + head, n, out, ctx.totals);
    head = upTo;
  };
  const uint64_t end = s.SegmentEnd(segment);
  for (uint64_t c0 = s.SegmentBegin(segment); c0 < end; c0 += kChunkWords) {
    const uint64_t c1 = std::min(c0 + kChunkWords, end);
    for (uint64_t r = (c0 + s.regionWords - 1) >> s.regionShift; r << s.regionShift < c1; r++) s.region[r] = 0;
    if (tail + kChunkWords + kScanSlack > kQueueEntries) {
      std::memmove(queue, queue + head, (tail - head) * sizeof(Work));
      tail -= head;
      head = 0;
    }
    PrefetchBitmapAhead(s, bitmap, c0, end);
    const size_t found = ops.scan(s, bitmap, c0, c1, queue + tail);
    for (size_t k = tail; k < tail + found; k++) PrefetchWordState(s, queue[k].index);
    tail += found;
    if (tail - head > kLagWords) drain(tail - kLagWords);
  }
  drain(tail);
}

// Runs `job(context, segment)` for every segment, claimed in order by the calling thread
// (context 0) and, with two threads, the worker (context 1); returns after both are done.
template <typename Job>
void ForEachSegment(AnalyzerState& s, Job job) {
  s.nextSegment.store(0, std::memory_order_relaxed);
  auto claim = [&s, &job](ThreadContext& ctx) {
    for (uint32_t j; (j = s.nextSegment.fetch_add(1, std::memory_order_relaxed)) < s.segments;) job(ctx, j);
  };
  if (s.threads == 1) return claim(s.thread[0]);
  ThreadContext& second = s.thread[1];
  s.worker->Start([&claim, &second] { claim(second); });
  try {
    claim(s.thread[0]);
  } catch (...) {
    s.nextSegment.store(s.segments, std::memory_order_relaxed);
    s.worker->Wait();
    throw;
  }
  s.worker->Wait();
}

PassTotals RunPass(AnalyzerState& s, const uint8_t* bitmap, const PassOps& ops) {
  for (ThreadContext& ctx : s.thread) ctx.totals = PassTotals{};
  if (s.threads > 1) std::fill(s.thread[1].curveDelta.begin(), s.thread[1].curveDelta.end(), 0);
  ForEachSegment(s, [&](ThreadContext& ctx, uint32_t j) { RunSegment(s, ctx, j, bitmap, ops); });
  PassTotals t = s.thread[0].totals;
  if (s.threads > 1) {
    const ThreadContext& second = s.thread[1];
    for (uint32_t i = 0; i < s.curveIntervals; i++) s.curve[i] += second.curveDelta[i];
    t.dirty += second.totals.dirty;
    t.newly += second.totals.newly;
    t.setWords += second.totals.setWords;
  }
  return t;
}

// Keeps every stamp's age unambiguous (see analyzer.h "Window"): a stamp at least R intervals
// old is set to one of the two clamped classes, "old, outside the window" (age oldOut) or "old,
// in the window" (age oldIn), chosen from its natural age or its current class. Neither
// changes a curve query (both are outside every curve window).
void Sweep(AnalyzerState& s) {
  const uint16_t now16 = static_cast<uint16_t>(s.now);
  const uint16_t young = static_cast<uint16_t>(s.curveIntervals);
  const uint16_t out = static_cast<uint16_t>(now16 - s.oldOut);
  const uint16_t in = static_cast<uint16_t>(now16 - s.oldIn);
  for (uint64_t k = 0; k < s.sweepWords; k++) {
    uint16_t* stamp = s.Stamps(s.sweepCursor);
    for (unsigned b = 0; b < 64; b++) {
      const uint16_t age = static_cast<uint16_t>(now16 - stamp[b]);
      stamp[b] = age < young ? stamp[b] : s.InWindow(age) ? in : out;
    }
    s.sweepCursor = s.sweepCursor + 1 == s.words ? 0 : s.sweepCursor + 1;
  }
}

// The replay of one segment (see ReplayLastPattern): its bitmap streamed step by step with the
// same prefetching ahead, each step's set words prefetched when their step is read and touched
// kLagWords later.
uint64_t ReplaySegment(AnalyzerState& s, uint32_t segment, const uint8_t* bitmap) {
  RingSlot& set = s.Slot(s.now, segment);
  const Kernels& kernels = KernelsFor(ActiveLevel());
  const uint64_t bitmapBytes = BitmapBytes(s.config.pages);
  uint64_t sum = 0;
  auto touch = [&sum](void* line) {
    uint64_t* q = static_cast<uint64_t*>(line);
    uint64_t v = *q;
    asm volatile("" : "+r"(v));  // a real read and write of the line, value unchanged
    *q = v;
    sum += v;
  };
  auto touchEntry = [&](size_t k) {
    uint16_t* stamp = s.Stamps(set.index[k]);
    touch(stamp);
    touch(stamp + 32);
    // The ring entry is written by the pass: rewrite it.
    uint64_t w = set.word[k];
    uint32_t x = set.index[k];
    asm volatile("" : "+r"(w), "+r"(x));
    set.word[k] = w;
    set.index[k] = x;
  };
  size_t fetched = 0, done = 0;
  const uint64_t end = s.SegmentEnd(segment);
  for (uint64_t c0 = s.SegmentBegin(segment); c0 < end; c0 += kChunkWords) {
    const uint64_t c1 = std::min(c0 + kChunkWords, end);
    PrefetchBitmapAhead(s, bitmap, c0, end);
    sum += kernels.stream(bitmap + c0 * 8, std::min(c1 * 8, bitmapBytes) - c0 * 8, nullptr, 0);
    for (; fetched < set.size && set.index[fetched] < c1; fetched++) PrefetchWordState(s, set.index[fetched]);
    for (; done + kLagWords < fetched; done++) touchEntry(done);
  }
  for (; done < set.size; done++) touchEntry(done);
  return sum;
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

Worker::Worker() : thread_([this] { Loop(); }) {}

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Worker::Start(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = std::move(job);
    error_ = nullptr;
    pending_ = true;
  }
  wake_.notify_all();
}

void Worker::Wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [this] { return !pending_; });
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

void Worker::Loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return pending_ || stop_; });
    if (stop_) return;
    std::function<void()> job = std::move(job_);
    lock.unlock();
    std::exception_ptr error;
    try {
      job();
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    error_ = error;
    pending_ = false;
    done_.notify_all();
  }
}

AnalyzerState::~AnalyzerState() {
  worker.reset();  // joins the thread before the state it uses goes
  std::free(stamps);
}

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
  if (c.threads > kMaxThreads) throw std::out_of_range("threads must be an integer from 0 to 2");
}

uint32_t Analyzer::ThreadsFor(const AnalyzerConfig& c) {
  Validate(c);
  if (c.threads) return c.threads;
  return c.pages >= kParallelMinPages && std::thread::hardware_concurrency() >= 2 ? 2 : 1;
}

namespace {

/** Words per segment: the whole guest on one thread; on two, 16 segments of whole regions. */
uint64_t SegmentWords(uint64_t words, uint32_t threads, uint64_t regionWords) {
  if (threads == 1) return words;
  constexpr uint64_t kSegmentsPerThreadPair = 16;
  const uint64_t regionsPerSegment = ((words + kSegmentsPerThreadPair - 1) / kSegmentsPerThreadPair + regionWords - 1) / regionWords;
  return std::max<uint64_t>(1, regionsPerSegment) * regionWords;
}

}  // namespace

AnalyzerMemory Analyzer::MemoryFor(const AnalyzerConfig& c) {
  const uint32_t threads = ThreadsFor(c);
  const uint64_t words = (c.pages + 63) / 64;
  const uint64_t regions = bitmap::RegionCount(c.pages, c.regionPages);
  const uint64_t curveIntervals = uint64_t{1} << (c.curveLevels - 1);
  const uint64_t segmentWords = SegmentWords(words, threads, c.regionPages / 64);
  const uint64_t segments = (words + segmentWords - 1) / segmentWords;
  AnalyzerMemory m;
  m.fixedBytes = words * detail::kStampBytesPerWord + regions * 4 + curveIntervals * 8 +
                 uint64_t{c.heatIntervals} * segments * sizeof(detail::RingSlot) +
                 threads * detail::kQueueEntries * sizeof(detail::Work) + (threads - 1) * curveIntervals * 8;
  m.ringBytesMax = uint64_t{c.heatIntervals} * words * (sizeof(uint32_t) + sizeof(uint64_t));
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
  s.regionShift = detail::Ctz(s.regionWords);
  s.regions = bitmap::RegionCount(config.pages, config.regionPages);
  s.curveIntervals = uint32_t{1} << (config.curveLevels - 1);
  // The sweep visits each word at least every P pushes, P = (2^16 - 2 - R) / 3, so that the
  // four age ranges (young, natural old, two clamped classes) fit 16 bits (see analyzer.h).
  const uint64_t sweepPeriod = (65534 - uint64_t{s.curveIntervals}) / 3;
  s.sweepWords = (s.words + sweepPeriod - 1) / sweepPeriod;
  s.oldOut = static_cast<uint16_t>(s.curveIntervals + sweepPeriod);
  s.oldIn = static_cast<uint16_t>(s.curveIntervals + 2 * sweepPeriod + 1);
  s.threads = ThreadsFor(config);
  s.segmentWords = SegmentWords(s.words, s.threads, s.regionWords);
  s.segments = static_cast<uint32_t>((s.words + s.segmentWords - 1) / s.segmentWords);

  s.stamps = reinterpret_cast<uint16_t*>(
      detail::AllocateHuge(s.words * detail::kStampBytesPerWord, &s.stampsBytes));
  // Every page starts clamped "old, outside the window": outside every curve window too.
  const uint16_t initial = static_cast<uint16_t>(0 - s.oldOut);
  std::fill(s.stamps, s.stamps + s.words * 64, initial);
  s.region.assign(s.regions, 0);
  s.curve.assign(s.curveIntervals, 0);
  s.ring.resize(uint64_t{config.heatIntervals} * s.segments);
  s.thread.resize(s.threads);
  for (uint32_t p = 0; p < s.threads; p++) {
    detail::ThreadContext& ctx = s.thread[p];
    ctx.work.resize(detail::kQueueEntries);
    if (p == 0) {
      ctx.curve = s.curve.data();
    } else {
      ctx.curveDelta.assign(s.curveIntervals, 0);
      ctx.curve = ctx.curveDelta.data();
    }
  }
  if (s.threads > 1) s.worker = std::make_unique<detail::Worker>();
}

Analyzer::~Analyzer() = default;

PushResult Analyzer::Push(const uint8_t* bitmap, SimdLevel level) {
  AnalyzerState& s = *state_;
  s.now++;
  // The curve slot of interval now held interval now - R, which has just left every window.
  s.curve[s.now & (s.curveIntervals - 1)] = 0;
  // The ring slots of interval now hold interval now - K, which leaves the heat window: dropped.
  uint64_t evicted = 0;
  for (uint32_t j = 0; j < s.segments; j++) {
    detail::RingSlot& slot = s.Slot(s.now, j);
    evicted += slot.size;
    slot.size = 0;
  }
  const detail::PassOps& ops = level == SimdLevel::kAvx2 && CpuHasAvx2() ? detail::Avx2PassOps() : detail::ScalarPassOps();
  const detail::PassTotals t = detail::RunPass(s, bitmap, ops);
  s.curve[s.now & (s.curveIntervals - 1)] = t.dirty;
  s.windowDirty += t.newly;
  detail::Sweep(s);

  PushTraffic& tr = s.traffic;
  tr.nonzeroWords = t.setWords;
  tr.evictedWords = evicted;
  tr.sweptWords = s.sweepWords;
  tr.readBytes = BitmapBytes(s.config.pages) + t.setWords * detail::kSetReadBytes + s.sweepWords * detail::kSweepWordBytes;
  tr.writeBytes = t.setWords * detail::kSetWriteBytes + s.regions * 4 + s.sweepWords * detail::kSweepWordBytes;
  return {t.dirty, t.newly, s.windowDirty};
}

void Analyzer::RegionHistogram(uint32_t* out) const {
  std::memcpy(out, state_->region.data(), state_->regions * sizeof(uint32_t));
}

// Heat on demand from the ring (see analyzer.h): the ring lists are walked together in chunks
// of words; each list entry is added into per-word bit-sliced counters (7 planes: heat <= 64),
// then each touched word's 64 counters are read out in groups of equal value (one AND chain per
// distinct value, usually one or two per word).
void Analyzer::HeatHistogram(uint64_t* out) const {
  AnalyzerState& s = *state_;
  constexpr uint64_t kChunk = 1024;
  constexpr unsigned kPlanes = 7;
  const uint32_t bins = s.config.heatIntervals + 1;
  std::fill(out, out + bins, 0);
  std::vector<uint64_t> planes(kChunk * kPlanes, 0);
  uint64_t touched[kChunk / 64] = {};
  std::vector<size_t> cursor(s.ring.size(), 0);
  uint64_t heated = 0;  // pages with heat >= 1
  for (uint64_t c0 = 0; c0 < s.words; c0 += kChunk) {
    const uint64_t c1 = c0 + kChunk;
    for (size_t j = 0; j < s.ring.size(); j++) {
      const detail::RingSlot& slot = s.ring[j];
      size_t i = cursor[j];
      for (; i < slot.size && slot.index[i] < c1; i++) {
        const uint64_t local = slot.index[i] - c0;
        uint64_t* pl = &planes[local * kPlanes];
        uint64_t carry = slot.word[i];
        for (unsigned b = 0; b < kPlanes && carry; b++) {
          const uint64_t next = pl[b] & carry;
          pl[b] ^= carry;
          carry = next;
        }
        touched[local / 64] |= uint64_t{1} << (local % 64);
      }
      cursor[j] = i;
    }
    for (uint64_t g = 0; g < kChunk / 64; g++) {
      for (uint64_t m = touched[g]; m; m &= m - 1) {
        uint64_t* pl = &planes[(g * 64 + detail::Ctz(m)) * kPlanes];
        uint64_t lanes = 0;
        for (unsigned b = 0; b < kPlanes; b++) lanes |= pl[b];
        while (lanes) {
          const unsigned lane = detail::Ctz(lanes);
          uint32_t value = 0;
          uint64_t group = lanes;
          for (unsigned b = 0; b < kPlanes; b++) {
            const bool bit = (pl[b] >> lane) & 1;
            value |= uint32_t{bit} << b;
            group &= bit ? pl[b] : ~pl[b];
          }
          const uint64_t n = detail::PopcountScalar(group);
          out[value] += n;
          heated += n;
          lanes &= ~group;
        }
        for (unsigned b = 0; b < kPlanes; b++) pl[b] = 0;
      }
      touched[g] = 0;
    }
  }
  out[0] = s.config.pages - heated;
}

uint32_t Analyzer::Heat(uint64_t page) const {
  AnalyzerState& s = *state_;
  if (page >= s.config.pages) throw std::out_of_range("page must be below pages");
  const uint32_t word = static_cast<uint32_t>(page / 64);
  const uint32_t segment = static_cast<uint32_t>(word / s.segmentWords);
  uint32_t heat = 0;
  for (uint32_t t = 0; t < s.config.heatIntervals; t++) {
    const detail::RingSlot& slot = s.ring[uint64_t{t} * s.segments + segment];
    const uint32_t* begin = slot.index.get();
    const uint32_t* end = begin + slot.size;
    const uint32_t* it = std::lower_bound(begin, end, word);
    if (it != end && *it == word) heat += (slot.word[it - begin] >> (page % 64)) & 1;
  }
  return heat;
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
  AnalyzerState& s = *state_;
  // Natural ages leave the window by moving its start; the clamped "in the window" class is
  // rewritten as "outside" (O(pages): a reset is rare, one per migration).
  s.windowStart = s.now + 1;
  const uint16_t now16 = static_cast<uint16_t>(s.now);
  const uint16_t out = static_cast<uint16_t>(now16 - s.oldOut);
  const uint16_t oldIn = s.oldIn;
  uint16_t* stamp = s.stamps;
  for (uint64_t i = 0; i < s.words * 64; i++) {
    const uint16_t age = static_cast<uint16_t>(now16 - stamp[i]);
    stamp[i] = age >= oldIn ? out : stamp[i];
  }
  s.windowDirty = 0;
}

uint64_t Analyzer::MemoryBytes() const {
  const AnalyzerState& s = *state_;
  uint64_t ring = 0;
  for (const detail::RingSlot& slot : s.ring) ring += slot.capacity * (sizeof(uint32_t) + sizeof(uint64_t));
  return MemoryFor(s.config).fixedBytes + (s.stampsBytes - s.words * detail::kStampBytesPerWord) + ring;
}

uint64_t Analyzer::ReplayLastPattern(const uint8_t* bitmap) {
  AnalyzerState& s = *state_;
  std::atomic<uint64_t> sum{0};
  detail::ForEachSegment(s, [&](detail::ThreadContext&, uint32_t j) {
    sum.fetch_add(detail::ReplaySegment(s, j, bitmap), std::memory_order_relaxed);
  });
  return sum.load(std::memory_order_relaxed);
}

uint64_t StreamOnThreads(const uint8_t* src, size_t srcBytes, uint8_t* dst, size_t dstBytes, uint32_t threads) {
  const Kernels& kernels = KernelsFor(ActiveLevel());
  if (threads < 2) return kernels.stream(src, srcBytes, dst, dstBytes);
  static detail::Worker worker;  // one for the process, started on first use like an analyzer's
  const size_t srcHalf = srcBytes / 2 / 64 * 64, dstHalf = dstBytes / 2 / 64 * 64;
  uint64_t upper = 0;
  uint8_t* dstUpper = dstBytes ? dst + dstHalf : dst;  // dst may be null when dstBytes is 0
  worker.Start([&] { upper = kernels.stream(src + srcHalf, srcBytes - srcHalf, dstUpper, dstBytes - dstHalf); });
  const uint64_t lower = kernels.stream(src, srcHalf, dst, dstHalf);
  worker.Wait();
  return lower ^ upper;
}

uint64_t Analyzer::Intervals() const { return state_->now; }
uint64_t Analyzer::RegionCount() const { return state_->regions; }
uint32_t Analyzer::Threads() const { return state_->threads; }
const AnalyzerConfig& Analyzer::Config() const { return state_->config; }
const PushTraffic& Analyzer::LastTraffic() const { return state_->traffic; }

}  // namespace dpa::bitmap
