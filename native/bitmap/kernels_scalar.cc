// Scalar kernels: the fallback on CPUs without AVX2 and the yardstick the AVX2 ones are tested
// against. Written one 64-bit word at a time, no intrinsics.
#include <cstdlib>
#include <cstring>

#include "bitmap/bitmap.h"
#include "bitmap/extents.h"
#include "bitmap/words.h"

namespace dpa::bitmap::detail {
namespace {

uint64_t Count(const uint8_t* bits, uint64_t pages) {
  const uint64_t full = pages / 64, tail = pages % 64;
  uint64_t n = 0;
  for (uint64_t i = 0; i < full; i++) n += PopcountScalar(LoadWord(bits + i * 8));
  if (tail) n += PopcountScalar(LoadTail(bits + full * 8, tail));
  return n;
}

uint64_t OrInto(uint8_t* dst, const uint8_t* src, uint64_t pages) {
  const uint64_t full = pages / 64, tail = pages % 64;
  uint64_t n = 0;
  for (uint64_t i = 0; i < full; i++) {
    const uint64_t w = LoadWord(dst + i * 8) | LoadWord(src + i * 8);
    StoreWord(dst + i * 8, w);
    n += PopcountScalar(w);
  }
  if (tail) {
    const uint64_t w = LoadTail(dst + full * 8, tail) | LoadTail(src + full * 8, tail);
    StoreTail(dst + full * 8, w, tail);
    n += PopcountScalar(w);
  }
  return n;
}

uint64_t AndNot(uint8_t* out, const uint8_t* a, const uint8_t* b, uint64_t pages) {
  const uint64_t full = pages / 64, tail = pages % 64;
  uint64_t n = 0;
  for (uint64_t i = 0; i < full; i++) {
    const uint64_t w = LoadWord(a + i * 8) & ~LoadWord(b + i * 8);
    StoreWord(out + i * 8, w);
    n += PopcountScalar(w);
  }
  if (tail) {
    const uint64_t w = LoadTail(a + full * 8, tail) & ~LoadTail(b + full * 8, tail);
    StoreTail(out + full * 8, w, tail);
    n += PopcountScalar(w);
  }
  return n;
}

void RegionHistogram(const uint8_t* bits, uint64_t pages, uint32_t regionPages, uint32_t* out) {
  const uint64_t full = pages / 64, tail = pages % 64;
  const uint64_t regionWords = regionPages / 64;
  const uint64_t regions = RegionCount(pages, regionPages);
  for (uint64_t r = 0; r < regions; r++) {
    const uint64_t begin = r * regionWords;
    const uint64_t end = begin + regionWords < full ? begin + regionWords : full;
    uint64_t n = 0;
    for (uint64_t i = begin; i < end; i++) n += PopcountScalar(LoadWord(bits + i * 8));
    // The tail word, if any, belongs to the last region (regions are whole words).
    if (tail && r + 1 == regions) n += PopcountScalar(LoadTail(bits + full * 8, tail));
    out[r] = static_cast<uint32_t>(n);
  }
}

ExtentsResult Extents(const uint8_t* bits, uint64_t pages, uint32_t* out, uint64_t maxExtents) {
  const uint64_t full = pages / 64, tail = pages % 64;
  RunWriter writer(out, maxExtents);
  for (uint64_t i = 0; i < full; i++) writer.Word(i, LoadWord(bits + i * 8));
  if (tail) writer.Word(full, LoadTail(bits + full * 8, tail));
  return writer.Finish(pages);
}

uint64_t Stream(const uint8_t* src, size_t srcBytes, uint8_t* dst, size_t dstBytes) {
  uint64_t sum = 0;
  size_t i = 0;
  for (; i + 8 <= srcBytes; i += 8) sum ^= LoadWord(src + i);
  for (; i < srcBytes; i++) sum ^= src[i];
  const uint64_t fill = sum | 1;
  size_t j = 0;
  for (; j + 8 <= dstBytes; j += 8) StoreWord(dst + j, fill);
  for (; j < dstBytes; j++) dst[j] = static_cast<uint8_t>(fill);
  return sum;
}

}  // namespace

const Kernels& ScalarKernels() {
  static const Kernels kernels = {Count, OrInto, AndNot, RegionHistogram, Extents, Stream};
  return kernels;
}

}  // namespace dpa::bitmap::detail
