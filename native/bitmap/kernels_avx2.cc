// AVX2 kernels: 4 words per step, zero (or all-ones) groups skipped with one vptest. Same
// results as kernels_scalar.cc bit for bit; test/native/bitmap_test.cc compares them.
#include <immintrin.h>

#include "bitmap/bitmap.h"
#include "bitmap/extents.h"
#include "bitmap/simd_avx2.h"
#include "bitmap/words.h"

namespace dpa::bitmap::detail {
namespace {

DPA_AVX2_TARGET inline __m256i Load4(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
DPA_AVX2_TARGET inline void Store4(uint8_t* p, __m256i v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
}

DPA_AVX2_TARGET uint64_t PopcountWords(const uint8_t* p, uint64_t words) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  uint64_t i = 0;
  for (; i + 8 <= words; i += 8) {
    acc0 = _mm256_add_epi64(acc0, PopcountLanes(Load4(p + i * 8)));
    acc1 = _mm256_add_epi64(acc1, PopcountLanes(Load4(p + i * 8 + 32)));
  }
  uint64_t n = SumLanes(_mm256_add_epi64(acc0, acc1));
  for (; i < words; i++) n += Popcnt(LoadWord(p + i * 8));
  return n;
}

DPA_AVX2_TARGET uint64_t Count(const uint8_t* bits, uint64_t pages) {
  const uint64_t full = pages / 64, tail = pages % 64;
  uint64_t n = PopcountWords(bits, full);
  if (tail) n += Popcnt(LoadTail(bits + full * 8, tail));
  return n;
}

DPA_AVX2_TARGET uint64_t OrInto(uint8_t* dst, const uint8_t* src, uint64_t pages) {
  const uint64_t full = pages / 64, tail = pages % 64;
  __m256i acc = _mm256_setzero_si256();
  uint64_t i = 0;
  for (; i + 4 <= full; i += 4) {
    const __m256i w = _mm256_or_si256(Load4(dst + i * 8), Load4(src + i * 8));
    Store4(dst + i * 8, w);
    acc = _mm256_add_epi64(acc, PopcountLanes(w));
  }
  uint64_t n = SumLanes(acc);
  for (; i < full; i++) {
    const uint64_t w = LoadWord(dst + i * 8) | LoadWord(src + i * 8);
    StoreWord(dst + i * 8, w);
    n += Popcnt(w);
  }
  if (tail) {
    const uint64_t w = LoadTail(dst + full * 8, tail) | LoadTail(src + full * 8, tail);
    StoreTail(dst + full * 8, w, tail);
    n += Popcnt(w);
  }
  return n;
}

DPA_AVX2_TARGET uint64_t AndNot(uint8_t* out, const uint8_t* a, const uint8_t* b, uint64_t pages) {
  const uint64_t full = pages / 64, tail = pages % 64;
  __m256i acc = _mm256_setzero_si256();
  uint64_t i = 0;
  for (; i + 4 <= full; i += 4) {
    // andnot(x, y) = ~x & y
    const __m256i w = _mm256_andnot_si256(Load4(b + i * 8), Load4(a + i * 8));
    Store4(out + i * 8, w);
    acc = _mm256_add_epi64(acc, PopcountLanes(w));
  }
  uint64_t n = SumLanes(acc);
  for (; i < full; i++) {
    const uint64_t w = LoadWord(a + i * 8) & ~LoadWord(b + i * 8);
    StoreWord(out + i * 8, w);
    n += Popcnt(w);
  }
  if (tail) {
    const uint64_t w = LoadTail(a + full * 8, tail) & ~LoadTail(b + full * 8, tail);
    StoreTail(out + full * 8, w, tail);
    n += Popcnt(w);
  }
  return n;
}

DPA_AVX2_TARGET void RegionHistogram(const uint8_t* bits, uint64_t pages, uint32_t regionPages,
                                     uint32_t* out) {
  const uint64_t full = pages / 64, tail = pages % 64;
  const uint64_t regionWords = regionPages / 64;
  const uint64_t regions = RegionCount(pages, regionPages);
  for (uint64_t r = 0; r < regions; r++) {
    const uint64_t begin = r * regionWords;
    const uint64_t end = begin + regionWords < full ? begin + regionWords : full;
    uint64_t n = begin < end ? PopcountWords(bits + begin * 8, end - begin) : 0;
    if (tail && r + 1 == regions) n += Popcnt(LoadTail(bits + full * 8, tail));
    out[r] = static_cast<uint32_t>(n);
  }
}

DPA_AVX2_TARGET ExtentsResult Extents(const uint8_t* bits, uint64_t pages, uint32_t* out,
                                      uint64_t maxExtents) {
  const uint64_t full = pages / 64, tail = pages % 64;
  const __m256i ones = _mm256_set1_epi8(-1);
  RunWriter writer(out, maxExtents);
  uint64_t i = 0;
  while (i < full) {
    if (i + 4 <= full) {
      // Four words with no run boundary: all clear outside a run, all set inside one.
      const __m256i v = Load4(bits + i * 8);
      if (writer.InRun() ? _mm256_testc_si256(v, ones) : _mm256_testz_si256(v, v)) {
        i += 4;
        continue;
      }
    }
    writer.Word(i, LoadWord(bits + i * 8));
    i++;
  }
  if (tail) writer.Word(full, LoadTail(bits + full * 8, tail));
  return writer.Finish(pages);
}

DPA_AVX2_TARGET uint64_t Stream(const uint8_t* src, size_t srcBytes, uint8_t* dst, size_t dstBytes) {
  __m256i x0 = _mm256_setzero_si256(), x1 = x0, x2 = x0, x3 = x0;
  size_t i = 0;
  for (; i + 128 <= srcBytes; i += 128) {
    x0 = _mm256_xor_si256(x0, Load4(src + i));
    x1 = _mm256_xor_si256(x1, Load4(src + i + 32));
    x2 = _mm256_xor_si256(x2, Load4(src + i + 64));
    x3 = _mm256_xor_si256(x3, Load4(src + i + 96));
  }
  const __m256i x = _mm256_xor_si256(_mm256_xor_si256(x0, x1), _mm256_xor_si256(x2, x3));
  uint64_t sum = static_cast<uint64_t>(_mm256_extract_epi64(x, 0) ^ _mm256_extract_epi64(x, 1) ^
                                       _mm256_extract_epi64(x, 2) ^ _mm256_extract_epi64(x, 3));
  for (; i + 8 <= srcBytes; i += 8) sum ^= LoadWord(src + i);
  for (; i < srcBytes; i++) sum ^= src[i];
  const __m256i fill = _mm256_set1_epi64x(static_cast<int64_t>(sum | 1));
  size_t j = 0;
  for (; j + 128 <= dstBytes; j += 128) {
    Store4(dst + j, fill);
    Store4(dst + j + 32, fill);
    Store4(dst + j + 64, fill);
    Store4(dst + j + 96, fill);
  }
  for (; j < dstBytes; j++) dst[j] = static_cast<uint8_t>(sum | 1);
  return sum;
}

}  // namespace

const Kernels& Avx2Kernels() {
  static const Kernels kernels = {Count, OrInto, AndNot, RegionHistogram, Extents, Stream};
  return kernels;
}

}  // namespace dpa::bitmap::detail
