// The Analyzer's AVX2 scan and word processing. A word's 64 stamps are four vectors of u16: the
// word's bits are expanded into lane masks and the stamps updated with a handful of
// instructions. The curve and newly-dirty counts are updated per group of set lanes sharing one
// old stamp (see analyzer.h), found with one compare each.
#include <immintrin.h>

#include "bitmap/analyzer_state.h"
#include "bitmap/simd_avx2.h"
#include "bitmap/words.h"

namespace dpa::bitmap::detail {
namespace {

DPA_AVX2_TARGET inline __m256i LoadV(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}
DPA_AVX2_TARGET inline void StoreV(void* p, __m256i v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }

DPA_AVX2_TARGET size_t ScanAvx2(AnalyzerState& s, const uint8_t* bitmap, uint64_t begin, uint64_t end, Work* out) {
  size_t n = 0;
  uint64_t i = begin;
  const uint64_t fullEnd = end < s.fullWords ? end : s.fullWords;
  uint32_t* region = s.region.data();
  const unsigned regionShift = s.regionShift;
  // Groups of 8 words (begin is a multiple of 8, regions are whole multiples of 8 words, so a
  // group lies in one region). A zero group costs one test; a nonzero one is compacted without
  // branches (an entry for a zero word is written, then overwritten), because whether a word of
  // a clustered bitmap is zero is a coin toss the branch predictor loses.
  for (; i + 8 <= fullEnd; i += 8) {
    const __m256i v0 = LoadV(bitmap + i * 8), v1 = LoadV(bitmap + i * 8 + 32);
    const __m256i any = _mm256_or_si256(v0, v1);
    if (_mm256_testz_si256(any, any)) continue;
    for (uint64_t k = i; k < i + 8; k++) {
      const uint64_t w = LoadWord(bitmap + k * 8);
      out[n] = Work{w, static_cast<uint32_t>(k)};
      n += w != 0;
    }
    region[i >> regionShift] += static_cast<uint32_t>(SumLanes(_mm256_add_epi64(PopcountLanes(v0), PopcountLanes(v1))));
  }
  for (; i < end; i++) {
    const uint64_t w = i < s.fullWords ? LoadWord(bitmap + i * 8) : LoadTail(bitmap + i * 8, s.tailPages);
    if (!w) continue;
    out[n++] = Work{w, static_cast<uint32_t>(i)};
    region[i >> regionShift] += static_cast<uint32_t>(Popcnt(w));
  }
  return n;
}

DPA_AVX2_TARGET void ProcessAvx2(const AnalyzerState& s, uint64_t* curve, const Work* work, size_t n, RingSlot& out,
                                 PassTotals& t) {
  const uint16_t now16 = static_cast<uint16_t>(s.now);
  const uint32_t curveIntervals = s.curveIntervals;
  const uint32_t curveMask = curveIntervals - 1;
  const __m256i nowV = _mm256_set1_epi16(static_cast<int16_t>(now16));
  // A page is outside the window (newly dirty) when limit < a < oldIn for its stamp's age a
  // (see AnalyzerState::InWindow): one unsigned compare, a - (limit + 1) <= oldIn - limit - 2.
  const uint16_t limit = s.WindowAgeLimit();
  const uint16_t outsideMax = static_cast<uint16_t>(s.oldIn - limit - 2);
  // The ring list is written through locals: stores through out.word (u64) could otherwise
  // alias out.size and the curve counters and force reloads.
  uint32_t* ringIndex = out.index.get() + out.size;
  uint64_t* ringWord = out.word.get() + out.size;
  uint64_t dirty = 0, newly = 0;
  for (size_t k = 0; k < n; k++) {
    const uint64_t w = work[k].set;
    const uint32_t index = work[k].index;
    ringIndex[k] = index;
    ringWord[k] = w;
    uint16_t* stamp = s.Stamps(index);
    const __m256i s0 = LoadV(stamp), s1 = LoadV(stamp + 16), s2 = LoadV(stamp + 32), s3 = LoadV(stamp + 48);
    // Set lanes grouped by equal old stamp (clustered writes: usually one group), one compare
    // each; a group's pages leave their old stamp's curve count if it is young, and count as
    // newly dirty if that stamp says "outside the window". Branch-free: whether a word's pages
    // were dirtied recently is a coin toss for the predictor (the loop, run at least once, it
    // predicts well).
    uint64_t rest = w;
    do {
      const uint16_t old = stamp[Ctz(rest)];
      const __m256i v = _mm256_set1_epi16(static_cast<int16_t>(old));
      const uint64_t group = rest & (uint64_t{EqualWords32(s0, s1, v)} | (uint64_t{EqualWords32(s2, s3, v)} << 32));
      const uint16_t age = static_cast<uint16_t>(now16 - old);
      const uint64_t pages = Popcnt(group);
      curve[old & curveMask] -= pages & (0 - uint64_t{age < curveIntervals});
      newly += pages & (0 - uint64_t{static_cast<uint16_t>(age - limit - 1) <= outsideMax});
      rest &= ~group;
    } while (rest);
    StoreV(stamp, _mm256_blendv_epi8(s0, nowV, ExpandBitsToWords(static_cast<uint32_t>(w & 0xFFFF))));
    StoreV(stamp + 16, _mm256_blendv_epi8(s1, nowV, ExpandBitsToWords(static_cast<uint32_t>((w >> 16) & 0xFFFF))));
    StoreV(stamp + 32, _mm256_blendv_epi8(s2, nowV, ExpandBitsToWords(static_cast<uint32_t>((w >> 32) & 0xFFFF))));
    StoreV(stamp + 48, _mm256_blendv_epi8(s3, nowV, ExpandBitsToWords(static_cast<uint32_t>(w >> 48))));
    dirty += Popcnt(w);
  }
  out.size += n;
  t.dirty += dirty;
  t.newly += newly;
  t.setWords += n;
}

}  // namespace

const PassOps& Avx2PassOps() {
  static const PassOps ops = {ScanAvx2, ProcessAvx2};
  return ops;
}

}  // namespace dpa::bitmap::detail
