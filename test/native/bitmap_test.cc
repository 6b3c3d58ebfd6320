// Bitmap kernels and Analyzer: the AVX2 set against the scalar set and both against a per-page
// model written here from the definitions, on random, clustered and sparse bitmaps with odd page
// counts, unaligned buffers and garbage bits beyond `pages`; plus hand-computed values.
// Runs under ASan + UBSan (scripts/native-test.js): any read past a buffer's end fails it.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "bitmap/analyzer.h"
#include "bitmap/bitmap.h"
#include "test_util.h"

namespace bm = dpa::bitmap;

namespace {

struct Rng {
  uint64_t s;
  uint64_t Next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  uint64_t Below(uint64_t n) { return Next() % n; }
};

bool Bit(const uint8_t* b, uint64_t p) { return (b[p / 8] >> (p % 8)) & 1; }
void SetBit(uint8_t* b, uint64_t p) { b[p / 8] = static_cast<uint8_t>(b[p / 8] | (1u << (p % 8))); }

enum class Shape { kRandom, kSparse, kClustered, kFull, kEmpty };

// A bitmap of exactly BitmapBytes(pages) bytes at an odd offset inside a heap block whose
// size is exact (ASan catches any read past it), with the last byte's unused bits set.
struct Buffer {
  std::vector<uint8_t> storage;
  size_t offset;
  uint64_t pages;
  Buffer(uint64_t pages, size_t offset) : storage(bm::BitmapBytes(pages) + offset), offset(offset), pages(pages) {}
  uint8_t* data() { return storage.data() + offset; }
  size_t bytes() const { return storage.size() - offset; }
};

void Fill(Buffer& buf, Shape shape, Rng& rng) {
  uint8_t* b = buf.data();
  std::memset(b, 0, buf.bytes());
  const uint64_t pages = buf.pages;
  switch (shape) {
    case Shape::kRandom:
      for (size_t i = 0; i < buf.bytes(); i++) b[i] = static_cast<uint8_t>(rng.Next());
      break;
    case Shape::kSparse:
      for (uint64_t k = 0; pages && k < pages / 50 + 1; k++) SetBit(b, rng.Below(pages));
      break;
    case Shape::kClustered:
      for (uint64_t k = 0; pages && k < pages / 400 + 2; k++) {
        const uint64_t start = rng.Below(pages);
        const uint64_t length = 1 + rng.Below(rng.Below(4) == 0 ? 700 : 70);
        for (uint64_t p = start; p < start + length && p < pages; p++) SetBit(b, p);
      }
      break;
    case Shape::kFull:
      std::memset(b, 0xFF, buf.bytes());
      break;
    case Shape::kEmpty:
      break;
  }
  // Garbage beyond `pages` in the last byte: every kernel must ignore it.
  if (pages % 8) b[buf.bytes() - 1] = static_cast<uint8_t>(b[buf.bytes() - 1] | (0xFF << (pages % 8)));
}

uint64_t ModelCount(const uint8_t* b, uint64_t pages) {
  uint64_t n = 0;
  for (uint64_t p = 0; p < pages; p++) n += Bit(b, p);
  return n;
}

std::vector<uint32_t> ModelExtents(const uint8_t* b, uint64_t pages) {
  std::vector<uint32_t> runs;
  for (uint64_t p = 0; p < pages;) {
    if (!Bit(b, p)) {
      p++;
      continue;
    }
    const uint64_t start = p;
    while (p < pages && Bit(b, p)) p++;
    runs.push_back(static_cast<uint32_t>(start));
    runs.push_back(static_cast<uint32_t>(p - start));
  }
  return runs;
}

const bm::Kernels& Scalar() { return bm::KernelsFor(bm::SimdLevel::kScalar); }
const bm::Kernels& Avx2() { return bm::KernelsFor(bm::SimdLevel::kAvx2); }

void CheckKernels(uint64_t pages, Shape shapeA, Shape shapeB, Rng& rng) {
  const size_t offset = 1 + rng.Below(7);
  Buffer a(pages, offset), b(pages, 8 - offset);
  Fill(a, shapeA, rng);
  Fill(b, shapeB, rng);
  const uint64_t expectA = ModelCount(a.data(), pages);
  for (const bm::Kernels* k : {&Scalar(), &Avx2()}) {
    CHECK_EQ(k->count(a.data(), pages), expectA);

    // orInto: every page of dst becomes a|b; bits beyond pages keep dst's own.
    Buffer dst(pages, offset);
    std::memcpy(dst.data(), a.data(), a.bytes());
    const uint64_t orCount = k->orInto(dst.data(), b.data(), pages);
    uint64_t expectOr = 0;
    for (uint64_t p = 0; p < pages; p++) {
      const bool v = Bit(a.data(), p) || Bit(b.data(), p);
      expectOr += v;
      if (Bit(dst.data(), p) != v) {
        CHECK(false);
        break;
      }
    }
    CHECK_EQ(orCount, expectOr);
    if (pages % 8) CHECK_EQ(dst.data()[dst.bytes() - 1] >> (pages % 8), a.data()[a.bytes() - 1] >> (pages % 8));

    // andNot into a fresh buffer, and in place (out == a).
    Buffer out(pages, 3);
    std::memset(out.data(), 0x5A, out.bytes());
    const uint64_t andCount = k->andNot(out.data(), a.data(), b.data(), pages);
    uint64_t expectAnd = 0;
    for (uint64_t p = 0; p < pages; p++) {
      const bool v = Bit(a.data(), p) && !Bit(b.data(), p);
      expectAnd += v;
      if (Bit(out.data(), p) != v) {
        CHECK(false);
        break;
      }
    }
    CHECK_EQ(andCount, expectAnd);
    if (pages % 8) CHECK_EQ(out.data()[out.bytes() - 1] >> (pages % 8), 0x5A >> (pages % 8));
    Buffer inPlace(pages, offset);
    std::memcpy(inPlace.data(), a.data(), a.bytes());
    CHECK_EQ(k->andNot(inPlace.data(), inPlace.data(), b.data(), pages), expectAnd);
    CHECK(std::memcmp(inPlace.data(), out.data(), pages / 8) == 0);

    for (uint32_t regionPages : {512u, 1024u, 4096u}) {
      const uint64_t regions = bm::RegionCount(pages, regionPages);
      std::vector<uint32_t> hist(regions + 1, 0xDEADBEEF);
      k->regionHistogram(a.data(), pages, regionPages, hist.data());
      for (uint64_t r = 0; r < regions; r++) {
        uint64_t n = 0;
        for (uint64_t p = r * regionPages; p < (r + 1) * regionPages && p < pages; p++) n += Bit(a.data(), p);
        CHECK_EQ(hist[r], n);
      }
      CHECK_EQ(hist[regions], 0xDEADBEEFu);  // nothing written past the last region
    }

    const std::vector<uint32_t> runs = ModelExtents(a.data(), pages);
    const uint64_t total = runs.size() / 2;
    for (uint64_t cap : {total, total / 2, uint64_t{0}}) {
      std::vector<uint32_t> got(2 * cap + 2, 0xEEEEEEEE);
      const bm::ExtentsResult r = k->extents(a.data(), pages, got.data(), cap);
      CHECK_EQ(r.total, total);
      CHECK_EQ(r.returned, cap);
      CHECK(std::equal(got.begin(), got.begin() + 2 * cap, runs.begin()));
      CHECK_EQ(got[2 * cap], 0xEEEEEEEEu);
    }
  }
}

void KnownValues() {
  // Pages 0..2, 63..65 (across a word boundary), 127 (last page), with garbage above page 127
  // irrelevant here because 128 pages fill the bytes exactly.
  std::vector<uint8_t> b(16, 0);
  for (uint64_t p : {0, 1, 2, 63, 64, 65, 127}) SetBit(b.data(), p);
  for (const bm::Kernels* k : {&Scalar(), &Avx2()}) {
    CHECK_EQ(k->count(b.data(), 128), 7u);
    CHECK_EQ(k->count(b.data(), 64), 4u);
    CHECK_EQ(k->count(b.data(), 3), 3u);
    uint32_t out[8];
    const bm::ExtentsResult r = k->extents(b.data(), 128, out, 4);
    CHECK_EQ(r.total, 3u);
    CHECK_EQ(r.returned, 3u);
    CHECK_EQ(out[0], 0u);
    CHECK_EQ(out[1], 3u);
    CHECK_EQ(out[2], 63u);
    CHECK_EQ(out[3], 3u);
    CHECK_EQ(out[4], 127u);
    CHECK_EQ(out[5], 1u);
    // A run cut by `pages` ends there.
    CHECK_EQ(k->extents(b.data(), 64, out, 4).total, 2u);
    CHECK_EQ(out[3], 1u);  // 63..63 only
  }
  // 1500 pages, all set: regions of 512 hold 512, 512, 476.
  std::vector<uint8_t> full(bm::BitmapBytes(1500), 0xFF);
  uint32_t hist[3];
  for (const bm::Kernels* k : {&Scalar(), &Avx2()}) {
    k->regionHistogram(full.data(), 1500, 512, hist);
    CHECK_EQ(hist[0], 512u);
    CHECK_EQ(hist[1], 512u);
    CHECK_EQ(hist[2], 476u);
    uint32_t run[2];
    CHECK_EQ(k->extents(full.data(), 1500, run, 1).total, 1u);
    CHECK_EQ(run[1], 1500u);
  }
}

// The Analyzer's definitions, page by page, from the full history of bitmaps.
struct Model {
  uint64_t pages;
  uint32_t heatIntervals, curveLevels, regionPages;
  std::vector<std::vector<bool>> history;
  std::vector<bool> window;

  Model(const bm::AnalyzerConfig& c)
      : pages(c.pages), heatIntervals(c.heatIntervals), curveLevels(c.curveLevels), regionPages(c.regionPages),
        window(c.pages, false) {}

  bm::PushResult Push(const uint8_t* b) {
    std::vector<bool> v(pages);
    bm::PushResult r{0, 0, 0};
    for (uint64_t p = 0; p < pages; p++) {
      v[p] = Bit(b, p);
      if (v[p]) {
        r.dirtyPages++;
        if (!window[p]) r.newlyDirtyInWindow++;
        window[p] = true;
      }
    }
    for (uint64_t p = 0; p < pages; p++) r.windowDirtyPages += window[p];
    history.push_back(std::move(v));
    return r;
  }
  uint32_t Heat(uint64_t p) const {
    uint32_t h = 0;
    for (size_t k = 0; k < heatIntervals && k < history.size(); k++) h += history[history.size() - 1 - k][p];
    return h;
  }
  uint64_t Distinct(uint64_t w) const {
    uint64_t n = 0;
    for (uint64_t p = 0; p < pages; p++) {
      bool any = false;
      for (size_t k = 0; k < w && k < history.size() && !any; k++) any = history[history.size() - 1 - k][p];
      n += any;
    }
    return n;
  }
};

void CompareAnalyzers(const bm::Analyzer& x, const bm::Analyzer& y, const Model* model) {
  const bm::AnalyzerConfig& c = x.Config();
  std::vector<uint64_t> hx(c.heatIntervals + 1), hy(c.heatIntervals + 1);
  x.HeatHistogram(hx.data());
  y.HeatHistogram(hy.data());
  CHECK(hx == hy);
  uint64_t cx[16], cy[16];
  x.DirtyCurve(cx);
  y.DirtyCurve(cy);
  for (uint32_t j = 0; j < c.curveLevels; j++) CHECK_EQ(cx[j], cy[j]);
  std::vector<uint32_t> rx(x.RegionCount()), ry(y.RegionCount());
  x.RegionHistogram(rx.data());
  y.RegionHistogram(ry.data());
  CHECK(rx == ry);
  std::vector<uint64_t> mh(c.heatIntervals + 1, 0);
  for (uint64_t p = 0; p < c.pages; p++) {
    CHECK_EQ(x.Heat(p), y.Heat(p));
    if (model) mh[model->Heat(p)]++;
  }
  if (!model) return;
  CHECK(mh == hx);
  for (uint32_t j = 0; j < c.curveLevels; j++) CHECK_EQ(cx[j], model->Distinct(uint64_t{1} << j));
  const std::vector<bool>& last = model->history.back();
  for (uint64_t r = 0; r < rx.size(); r++) {
    uint64_t n = 0;
    for (uint64_t p = r * c.regionPages; p < (r + 1) * c.regionPages && p < c.pages; p++) n += last[p];
    CHECK_EQ(rx[r], n);
  }
}

void AnalyzerAgainstModel(const bm::AnalyzerConfig& config, int intervals, Rng& rng) {
  bm::Analyzer scalar(config), avx2(config), mixed(config);
  Model model(config);
  for (int t = 0; t < intervals; t++) {
    Buffer b(config.pages, 1 + rng.Below(7));
    const Shape shapes[] = {Shape::kRandom, Shape::kSparse, Shape::kClustered, Shape::kClustered, Shape::kEmpty, Shape::kFull};
    Fill(b, shapes[rng.Below(6)], rng);
    if (t == intervals / 2) {
      scalar.ResetWindow();
      avx2.ResetWindow();
      mixed.ResetWindow();
      model.window.assign(config.pages, false);
    }
    const bm::PushResult rs = scalar.Push(b.data(), bm::SimdLevel::kScalar);
    const bm::PushResult ra = avx2.Push(b.data(), bm::SimdLevel::kAvx2);
    // The benchmark replay reads and rewrites state lines: it must change nothing.
    avx2.ReplayLastPattern(b.data());
    // Alternating levels on one state: both must leave it in the same layout.
    mixed.Push(b.data(), t % 2 ? bm::SimdLevel::kAvx2 : bm::SimdLevel::kScalar);
    const bm::PushResult rm = model.Push(b.data());
    CHECK_EQ(rs.dirtyPages, rm.dirtyPages);
    CHECK_EQ(rs.newlyDirtyInWindow, rm.newlyDirtyInWindow);
    CHECK_EQ(rs.windowDirtyPages, rm.windowDirtyPages);
    CHECK_EQ(ra.dirtyPages, rm.dirtyPages);
    CHECK_EQ(ra.newlyDirtyInWindow, rm.newlyDirtyInWindow);
    CHECK_EQ(ra.windowDirtyPages, rm.windowDirtyPages);
    CompareAnalyzers(scalar, avx2, &model);
    CompareAnalyzers(scalar, mixed, nullptr);
  }
}

// The 16-bit stamps wrap every 65536 intervals; the sweep must keep old pages out of the curve.
void StampWraparound(uint32_t curveLevels) {
  const bm::AnalyzerConfig config{200, 3, curveLevels, 512};
  bm::Analyzer scalar(config), avx2(config);
  std::vector<uint64_t> lastSeen(config.pages, 0);
  Rng rng{99};
  Buffer b(config.pages, 0);
  const uint64_t intervals = 140000;
  for (uint64_t now = 1; now <= intervals; now++) {
    std::memset(b.data(), 0, b.bytes());
    // Pages whose stamps alias: dirtied again exactly 65536 + 3 (page 0) or 65536 + 100 (pages
    // 170..199) intervals later, when the 16-bit stamp alone would look 3 or 100 intervals old.
    if (now == 5 || now == 5 + 65536 + 3) SetBit(b.data(), 0);
    if (now == 1000 || now == 1000 + 65536 + 100)
      for (uint64_t p = 170; p < 200; p++) SetBit(b.data(), p);
    if (now % 3 == 0) SetBit(b.data(), 1 + rng.Below(99));
    if (now % 40000 == 0)
      for (uint64_t p = 100; p < 164; p++) SetBit(b.data(), p);
    for (uint64_t p = 0; p < config.pages; p++)
      if (Bit(b.data(), p)) lastSeen[p] = now;
    scalar.Push(b.data(), bm::SimdLevel::kScalar);
    avx2.Push(b.data(), bm::SimdLevel::kAvx2);
    if (now % 997 == 0 || (now >= 65540 && now <= 65546) || (now >= 66636 && now <= 66640) || now == intervals) {
      uint64_t cs[16], ca[16];
      scalar.DirtyCurve(cs);
      avx2.DirtyCurve(ca);
      for (uint32_t j = 0; j < curveLevels; j++) {
        uint64_t expect = 0;
        for (uint64_t p = 0; p < config.pages; p++) expect += lastSeen[p] && now - lastSeen[p] < (uint64_t{1} << j);
        CHECK_EQ(cs[j], expect);
        CHECK_EQ(ca[j], expect);
      }
    }
  }
}

// The window bit lives in the stamps (young and natural ages, then two clamped classes, see
// analyzer.h): pages dirtied again after gaps around R, R + P (clamping) and 2^16 (stamp wrap),
// with window resets in between, on a guest whose words the sweep visits exactly every P pushes.
void WindowAcrossSweeps(uint32_t curveLevels) {
  const uint64_t r = uint64_t{1} << (curveLevels - 1);
  const uint64_t period = (65534 - r) / 3;
  const bm::AnalyzerConfig config{64 * period, 2, curveLevels, 512};
  bm::Analyzer scalar(config), avx2(config);
  const uint64_t intervals = 72000;
  std::vector<uint64_t> tracked;
  for (uint64_t j = 0; j < 240; j++) tracked.push_back(j * 2909 % config.pages);
  tracked.push_back(config.pages - 1);
  const uint64_t gaps[] = {1, 2, r - 1, r, r + 1, r + period - 1, r + period, r + period + 1, r + 2 * period,
                           r + 2 * period + 2, 65535, 65536, 65537, 65539};
  // Each tracked page: dirtied at `first`, again `gap` later, and at random times.
  std::vector<uint64_t> first(tracked.size()), second(tracked.size());
  for (size_t j = 0; j < tracked.size(); j++) {
    first[j] = 1 + j * 37 % 3000;
    second[j] = first[j] + gaps[j % (sizeof gaps / sizeof gaps[0])];
  }
  std::vector<bool> window(config.pages, false);
  std::vector<uint64_t> lastSeen(config.pages, 0);
  uint64_t windowDirty = 0;
  Rng rng{4242};
  Buffer b(config.pages, 0);
  std::memset(b.data(), 0, b.bytes());
  for (uint64_t now = 1; now <= intervals; now++) {
    if (now == 20000 || now == 45000 || now == 66000) {
      scalar.ResetWindow();
      avx2.ResetWindow();
      window.assign(config.pages, false);
      windowDirty = 0;
    }
    std::vector<uint64_t> set;
    for (size_t j = 0; j < tracked.size(); j++)
      if (now == first[j] || now == second[j] || rng.Below(20000) == 0) set.push_back(tracked[j]);
    uint64_t newly = 0;
    for (uint64_t p : set) {
      if (Bit(b.data(), p)) continue;
      SetBit(b.data(), p);
      newly += !window[p];
      windowDirty += !window[p];
      window[p] = true;
      lastSeen[p] = now;
    }
    const bm::PushResult rs = scalar.Push(b.data(), bm::SimdLevel::kScalar);
    const bm::PushResult ra = avx2.Push(b.data(), bm::SimdLevel::kAvx2);
    CHECK_EQ(rs.newlyDirtyInWindow, newly);
    CHECK_EQ(ra.newlyDirtyInWindow, newly);
    CHECK_EQ(rs.windowDirtyPages, windowDirty);
    CHECK_EQ(ra.windowDirtyPages, windowDirty);
    for (uint64_t p : set) b.data()[p / 8] = 0;
    if (now % 4999 == 0 || now == intervals) {
      uint64_t cs[16], ca[16];
      scalar.DirtyCurve(cs);
      avx2.DirtyCurve(ca);
      for (uint32_t j = 0; j < curveLevels; j++) {
        uint64_t expect = 0;
        for (uint64_t p : tracked) expect += lastSeen[p] && now - lastSeen[p] < (uint64_t{1} << j);
        CHECK_EQ(cs[j], expect);
        CHECK_EQ(ca[j], expect);
      }
    }
  }
}

void AnalyzerKnownValues() {
  // 70 pages, K = 2, L = 3 (windows 1, 2, 4), five intervals; worked out by hand:
  //   t1: {0,1,2}   t2: {1,2,69}   t3: {}   t4: {2,3}   t5: {2,64}
  const bm::AnalyzerConfig config{70, 2, 3, 512};
  for (bm::SimdLevel level : {bm::SimdLevel::kScalar, bm::SimdLevel::kAvx2}) {
    bm::Analyzer a(config);
    std::vector<std::vector<uint64_t>> sets = {{0, 1, 2}, {1, 2, 69}, {}, {2, 3}, {2, 64}};
    std::vector<bm::PushResult> results;
    for (const auto& set : sets) {
      std::vector<uint8_t> b(9, 0);
      for (uint64_t p : set) SetBit(b.data(), p);
      b[8] |= 0xC0;  // pages 70, 71: beyond `pages`
      results.push_back(a.Push(b.data(), level));
    }
    CHECK_EQ(results[1].newlyDirtyInWindow, 1u);  // only 69
    CHECK_EQ(results[1].windowDirtyPages, 4u);
    CHECK_EQ(results[3].newlyDirtyInWindow, 1u);  // only 3
    CHECK_EQ(results[4].windowDirtyPages, 6u);    // 0 1 2 3 64 69
    // Heat over t4, t5: page 2 in both, 3 and 64 once.
    CHECK_EQ(a.Heat(2), 2u);
    CHECK_EQ(a.Heat(3), 1u);
    CHECK_EQ(a.Heat(64), 1u);
    CHECK_EQ(a.Heat(1), 0u);
    uint64_t hist[3];
    a.HeatHistogram(hist);
    CHECK_EQ(hist[0], 67u);
    CHECK_EQ(hist[1], 2u);
    CHECK_EQ(hist[2], 1u);
    // D(1) = |t5| = 2; D(2) = |t4 u t5| = 3; D(4) = |t2..t5| = {1,2,69,3,64} = 5.
    uint64_t curve[3];
    a.DirtyCurve(curve);
    CHECK_EQ(curve[0], 2u);
    CHECK_EQ(curve[1], 3u);
    CHECK_EQ(curve[2], 5u);
    uint32_t region[1];
    a.RegionHistogram(region);
    CHECK_EQ(region[0], 2u);
    a.ResetWindow();
    std::vector<uint8_t> b(9, 0);
    SetBit(b.data(), 2);
    const bm::PushResult r = a.Push(b.data(), level);
    CHECK_EQ(r.newlyDirtyInWindow, 1u);
    CHECK_EQ(r.windowDirtyPages, 1u);
  }
}

void ConfigValidation() {
  auto throws = [](bm::AnalyzerConfig c) {
    try {
      bm::Analyzer a(c);
      return false;
    } catch (const std::out_of_range&) {
      return true;
    }
  };
  CHECK(throws({0, 4, 4, 512}));
  CHECK(throws({100, 0, 4, 512}));
  CHECK(throws({100, 65, 4, 512}));
  CHECK(throws({100, 4, 0, 512}));
  CHECK(throws({100, 4, 17, 512}));
  CHECK(throws({100, 4, 4, 768}));
  CHECK(throws({100, 4, 4, 256}));
  CHECK(throws({100, 4, 4, 524288}));
  CHECK(throws({100, 4, 4, 512, 3}));
  CHECK(!throws({100, 64, 16, 262144}));
}

void ThreadChoice() {
  CHECK_EQ(bm::Analyzer::ThreadsFor({1000, 4, 4, 512, 0}), 1u);
  CHECK_EQ(bm::Analyzer::ThreadsFor({1000, 4, 4, 512, 2}), 2u);
  CHECK_EQ(bm::Analyzer::ThreadsFor({bm::Analyzer::kParallelMinPages - 1, 4, 4, 512, 0}), 1u);
  CHECK_EQ(bm::Analyzer::ThreadsFor({bm::Analyzer::kParallelMinPages, 4, 4, 512, 1}), 1u);
  const uint32_t automatic = std::thread::hardware_concurrency() >= 2 ? 2u : 1u;
  CHECK_EQ(bm::Analyzer::ThreadsFor({bm::Analyzer::kParallelMinPages, 4, 4, 512, 0}), automatic);
  bm::Analyzer a({1000, 4, 4, 512, 2});
  CHECK_EQ(a.Threads(), 2u);
}

}  // namespace

int main() {
  std::printf("cpu has avx2: %d\n", bm::CpuHasAvx2() ? 1 : 0);
  KnownValues();
  Rng rng{12345};
  const uint64_t pageCounts[] = {0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 255, 511, 512, 513, 1000, 4097, 70001};
  const Shape shapes[] = {Shape::kRandom, Shape::kSparse, Shape::kClustered, Shape::kFull, Shape::kEmpty};
  for (uint64_t pages : pageCounts)
    for (Shape a : shapes)
      for (Shape b : {Shape::kRandom, Shape::kClustered}) CheckKernels(pages, a, b, rng);
  CheckKernels(1000003, Shape::kClustered, Shape::kSparse, rng);

  AnalyzerKnownValues();
  ConfigValidation();
  AnalyzerAgainstModel({1, 1, 1, 512}, 20, rng);
  AnalyzerAgainstModel({65, 3, 4, 512}, 60, rng);
  AnalyzerAgainstModel({1000, 5, 5, 512}, 60, rng);
  AnalyzerAgainstModel({4099, 64, 7, 1024}, 90, rng);
  // Forced two-thread pushes: split mid-guest (4099 pages: at word 32; 1000 pages: at word 8)
  // and, for a guest smaller than one region, an empty lower part.
  AnalyzerAgainstModel({4099, 64, 7, 1024, 2}, 60, rng);
  AnalyzerAgainstModel({1000, 5, 5, 512, 2}, 40, rng);
  AnalyzerAgainstModel({65, 3, 4, 512, 2}, 30, rng);
  ThreadChoice();
  StampWraparound(16);
  StampWraparound(2);
  WindowAcrossSweeps(16);
  WindowAcrossSweeps(3);
  TEST_MAIN_END();
}
