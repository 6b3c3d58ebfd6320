// The Analyzer's AVX2 scan and word processing. A word's 64 heat counters are two vectors of
// bytes and its 64 stamps four vectors of u16: the word's bits are expanded into lane masks and
// the whole word is updated with a handful of instructions. The histogram and curve counters
// are updated per group of set lanes sharing one old value (see analyzer.h), found with one
// compare each.
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
  const uint64_t regionWords = s.regionWords;
  // Groups of 8 words (begin is a multiple of 8, regions are whole multiples of 8 words, so a
  // group lies in one region). A zero group costs one test; a nonzero one is compacted without
  // branches (an entry for a zero word is written, then overwritten), because whether a word of
  // a clustered bitmap is zero is a coin toss the branch predictor loses.
  for (; i + 8 <= fullEnd; i += 8) {
    const __m256i v0 = LoadV(bitmap + i * 8), v1 = LoadV(bitmap + i * 8 + 32);
    const __m256i any = _mm256_or_si256(v0, v1);
    if (_mm256_testz_si256(any, any)) continue;
    uint64_t dirty = 0;
    for (uint64_t k = i; k < i + 8; k++) {
      const uint64_t w = LoadWord(bitmap + k * 8);
      out[n] = Work{w, 0, static_cast<uint32_t>(k)};
      n += w != 0;
      dirty += Popcnt(w);
    }
    region[i / regionWords] += static_cast<uint32_t>(dirty);
  }
  for (; i < end; i++) {
    const uint64_t w = i < s.fullWords ? LoadWord(bitmap + i * 8) : LoadTail(bitmap + i * 8, s.tailPages);
    if (!w) continue;
    out[n++] = Work{w, 0, static_cast<uint32_t>(i)};
    region[i / regionWords] += static_cast<uint32_t>(Popcnt(w));
  }
  return n;
}

// Heat changes by one for the lanes of `lanes`, grouped by their current value: one compare
// and one count update per group (see heatAtLeast in analyzer_state.h).
DPA_AVX2_TARGET inline void MoveHeatUp(uint64_t* atLeast, const uint8_t* heat, __m256i h0, __m256i h1,
                                       uint64_t lanes) {
  while (lanes) {
    const uint8_t value = heat[Ctz(lanes)] & kHeatMask;
    const uint64_t group = lanes & EqualBytesMask(h0, h1, value);
    atLeast[value + 1] += Popcnt(group);
    lanes &= ~group;
  }
}

DPA_AVX2_TARGET inline void MoveHeatDown(uint64_t* atLeast, const uint8_t* heat, __m256i h0, __m256i h1,
                                         uint64_t lanes) {
  while (lanes) {
    const uint8_t value = heat[Ctz(lanes)] & kHeatMask;
    const uint64_t group = lanes & EqualBytesMask(h0, h1, value);
    atLeast[value] -= Popcnt(group);
    lanes &= ~group;
  }
}

DPA_AVX2_TARGET void ProcessAvx2(AnalyzerState& s, const Work* work, size_t n, RingSlot& out, PassTotals& t) {
  uint64_t* atLeast = s.heatAtLeast.data();
  uint64_t* curve = s.curve.data();
  const uint16_t now16 = static_cast<uint16_t>(s.now);
  const uint32_t curveIntervals = s.curveIntervals;
  const uint32_t curveMask = curveIntervals - 1;
  const __m256i nowV = _mm256_set1_epi16(static_cast<int16_t>(now16));
  const __m256i heatMask = _mm256_set1_epi8(static_cast<char>(kHeatMask));
  const __m256i windowBit = _mm256_set1_epi8(static_cast<char>(kWindowBit));
  for (size_t k = 0; k < n; k++) {
    const Work& e = work[k];
    uint8_t* heat = s.Heat(e.index);
    const uint64_t up = e.set & ~e.cleared;
    const uint64_t down = e.cleared & ~e.set;
    const uint64_t w = e.set;
    __m256i h0 = LoadV(heat), h1 = LoadV(heat + 32);
    if (up | down) {
      // Grouping compares heat values without the window bit.
      const __m256i v0 = _mm256_and_si256(h0, heatMask), v1 = _mm256_and_si256(h1, heatMask);
      MoveHeatUp(atLeast, heat, v0, v1, up);
      MoveHeatDown(atLeast, heat, v0, v1, down);
      // Lane masks are 0xFF = -1: subtracting one adds 1, adding one subtracts 1.
      h0 = _mm256_add_epi8(_mm256_sub_epi8(h0, ExpandBitsToBytes(static_cast<uint32_t>(up))),
                           ExpandBitsToBytes(static_cast<uint32_t>(down)));
      h1 = _mm256_add_epi8(_mm256_sub_epi8(h1, ExpandBitsToBytes(static_cast<uint32_t>(up >> 32))),
                           ExpandBitsToBytes(static_cast<uint32_t>(down >> 32)));
    }
    if (!w) {
      StoreV(heat, h0);
      StoreV(heat + 32, h1);
      t.evictOnlyWords++;
      continue;
    }
    // The window bits are the heat bytes' sign bits: one movemask per 32 pages.
    const uint64_t window = uint64_t{static_cast<uint32_t>(_mm256_movemask_epi8(h0))} |
                            (uint64_t{static_cast<uint32_t>(_mm256_movemask_epi8(h1))} << 32);
    t.newly += Popcnt(w & ~window);
    StoreV(heat, _mm256_or_si256(h0, _mm256_and_si256(ExpandBitsToBytes(static_cast<uint32_t>(w)), windowBit)));
    StoreV(heat + 32, _mm256_or_si256(h1, _mm256_and_si256(ExpandBitsToBytes(static_cast<uint32_t>(w >> 32)), windowBit)));
    out.index[out.size] = e.index;
    out.word[out.size++] = w;

    uint16_t* stamp = s.Stamps(e.index);
    const __m256i s0 = LoadV(stamp), s1 = LoadV(stamp + 16), s2 = LoadV(stamp + 32), s3 = LoadV(stamp + 48);
    uint64_t rest = w;
    do {
      const uint16_t old = stamp[Ctz(rest)];
      const __m256i v = _mm256_set1_epi16(static_cast<int16_t>(old));
      const uint64_t equal = uint64_t{EqualWords32(s0, s1, v)} | (uint64_t{EqualWords32(s2, s3, v)} << 32);
      const uint64_t group = rest & equal;
      if (static_cast<uint16_t>(now16 - old) < curveIntervals) curve[old & curveMask] -= Popcnt(group);
      rest &= ~group;
    } while (rest);
    StoreV(stamp, _mm256_blendv_epi8(s0, nowV, ExpandBitsToWords(static_cast<uint32_t>(w & 0xFFFF))));
    StoreV(stamp + 16, _mm256_blendv_epi8(s1, nowV, ExpandBitsToWords(static_cast<uint32_t>((w >> 16) & 0xFFFF))));
    StoreV(stamp + 32, _mm256_blendv_epi8(s2, nowV, ExpandBitsToWords(static_cast<uint32_t>((w >> 32) & 0xFFFF))));
    StoreV(stamp + 48, _mm256_blendv_epi8(s3, nowV, ExpandBitsToWords(static_cast<uint32_t>(w >> 48))));

    t.dirty += Popcnt(w);
    t.setWords++;
  }
}

}  // namespace

const PassOps& Avx2PassOps() {
  static const PassOps ops = {ScanAvx2, ProcessAvx2};
  return ops;
}

}  // namespace dpa::bitmap::detail
