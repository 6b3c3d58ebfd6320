// Word access shared by the scalar and AVX2 kernels (internal to native/bitmap).
// Bitmaps come from JS at any byte offset and any length, so whole words are loaded with
// memcpy (one unaligned mov) and the last, partial word byte by byte, masked to `pages`.
#pragma once
#include <cstdint>
#include <cstring>

#include "bitmap/bitmap.h"

namespace dpa::bitmap::detail {

inline uint64_t LoadWord(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof w);
  return w;
}

inline void StoreWord(uint8_t* p, uint64_t w) { std::memcpy(p, &w, sizeof w); }

inline uint64_t TailMask(uint64_t tailPages) { return (uint64_t{1} << tailPages) - 1; }

/** The partial last word: only its ceil(tailPages / 8) bytes are read, bits >= tailPages cleared. */
inline uint64_t LoadTail(const uint8_t* p, uint64_t tailPages) {
  uint64_t w = 0;
  std::memcpy(&w, p, (tailPages + 7) / 8);
  return w & TailMask(tailPages);
}

/** Writes the low tailPages bits of w, keeping the bits of the last byte that lie beyond them. */
inline void StoreTail(uint8_t* p, uint64_t w, uint64_t tailPages) {
  const size_t bytes = (tailPages + 7) / 8;
  uint64_t old = 0;
  std::memcpy(&old, p, bytes);
  const uint64_t mask = TailMask(tailPages);
  const uint64_t merged = (old & ~mask) | (w & mask);
  std::memcpy(p, &merged, bytes);
}

// Plain C so the scalar path stays scalar on CPUs without POPCNT (GCC emits a SWAR routine).
inline uint64_t PopcountScalar(uint64_t w) { return static_cast<uint64_t>(__builtin_popcountll(w)); }

inline unsigned Ctz(uint64_t w) { return static_cast<unsigned>(__builtin_ctzll(w)); }

// Scalar and AVX2 kernel sets, defined in kernels_scalar.cc and kernels_avx2.cc.
const Kernels& ScalarKernels();
const Kernels& Avx2Kernels();

}  // namespace dpa::bitmap::detail
