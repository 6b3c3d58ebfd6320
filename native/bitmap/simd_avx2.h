// AVX2 building blocks (internal to native/bitmap). Everything here is compiled for
// DPA_AVX2_TARGET only and must be called from functions with the same target attribute, which
// are reached only after CpuHasAvx2() said yes.
#pragma once
#include <immintrin.h>

#include <cstdint>

#define DPA_AVX2_TARGET __attribute__((target("avx2,popcnt,bmi,bmi2")))

namespace dpa::bitmap::detail {

// Per-byte popcount by nibble lookup (Mula's method): no POPCNT port pressure, 32 bytes at a time.
DPA_AVX2_TARGET inline __m256i PopcountBytes(__m256i v) {
  const __m256i lookup = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                          0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lookup, lo), _mm256_shuffle_epi8(lookup, hi));
}

/** Four u64 lanes, each the popcount of the corresponding word of v. */
DPA_AVX2_TARGET inline __m256i PopcountLanes(__m256i v) {
  return _mm256_sad_epu8(PopcountBytes(v), _mm256_setzero_si256());
}

DPA_AVX2_TARGET inline uint64_t SumLanes(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return static_cast<uint64_t>(_mm_cvtsi128_si64(s)) + static_cast<uint64_t>(_mm_extract_epi64(s, 1));
}

DPA_AVX2_TARGET inline uint64_t Popcnt(uint64_t w) { return static_cast<uint64_t>(_mm_popcnt_u64(w)); }

/** 32 byte lanes, lane i = 0xFF when bit i of bits is set, else 0. */
DPA_AVX2_TARGET inline __m256i ExpandBitsToBytes(uint32_t bits) {
  // Byte k of `bits` goes to lanes 8k..8k+7 (shuffle works per 128-bit half, and set1 put the
  // same 4 bytes in both halves, so the upper half's indices 2 and 3 still address bytes 2, 3).
  const __m256i spread = _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101,
                                            0x0202020202020202, 0x0303030303030303);
  const __m256i select = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int32_t>(bits)), spread);
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, select), select);
}

/** 16 u16 lanes, lane i = 0xFFFF when bit i of bits is set, else 0. */
DPA_AVX2_TARGET inline __m256i ExpandBitsToWords(uint32_t bits) {
  const __m256i select = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                           8192, 16384, static_cast<int16_t>(0x8000));
  const __m256i v = _mm256_set1_epi16(static_cast<int16_t>(bits));
  return _mm256_cmpeq_epi16(_mm256_and_si256(v, select), select);
}

/** Bit i set when byte lane i (0..63 over lo, hi) equals value. */
DPA_AVX2_TARGET inline uint64_t EqualBytesMask(__m256i lo, __m256i hi, uint8_t value) {
  const __m256i v = _mm256_set1_epi8(static_cast<char>(value));
  const uint64_t a = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, v)));
  const uint64_t b = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, v)));
  return a | (b << 32);
}

/** Bit i set when u16 lane i (0..31 over a, b) is all ones (a and b are lane masks: 0 or 0xFFFF). */
DPA_AVX2_TARGET inline uint32_t PackMasks32(__m256i a, __m256i b) {
  // packs interleaves the 128-bit halves (a0 b0 a1 b1); the permute puts them back in order.
  const __m256i packed = _mm256_packs_epi16(a, b);
  return static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_permute4x64_epi64(packed, 0xD8)));
}

/** Bit i set when u16 lane i (0..31 over a, b) equals v. */
DPA_AVX2_TARGET inline uint32_t EqualWords32(__m256i a, __m256i b, __m256i v) {
  return PackMasks32(_mm256_cmpeq_epi16(a, v), _mm256_cmpeq_epi16(b, v));
}

}  // namespace dpa::bitmap::detail
