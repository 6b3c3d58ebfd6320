// Dirty-bitmap kernels: one bit per 4 KiB page, page p = bit (p % 64) of the little-endian 64-bit
// word p / 64. Buffers are byte arrays of at least BitmapBytes(pages) bytes at any alignment;
// bits at or beyond `pages` are never read as data (loads of the last byte mask them off) and
// never written (stores into the last byte keep them). No Node headers, no syscalls: the
// Node-API glue validates arguments first, these functions trust them.
//
// Every kernel exists twice, scalar and AVX2 (functions compiled with
// __attribute__((target(...))), no global -mavx2), with identical results; KernelsFor() picks
// one set explicitly (the native tests compare them), Active() the process-wide choice.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dpa::bitmap {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "bitmap words are little-endian");

enum class SimdLevel : int { kScalar = 0, kAvx2 = 1 };

/** True when the CPU has AVX2 and the scalar extensions the AVX2 kernels also use (POPCNT, BMI1, BMI2). */
bool CpuHasAvx2();
/** Process-wide level, initially kAvx2 when the CPU has it. */
SimdLevel ActiveLevel();
/** Returns false (and changes nothing) when kAvx2 is asked for on a CPU without it. */
bool SetActiveLevel(SimdLevel level);
const char* LevelName(SimdLevel level);

constexpr uint64_t kMaxPages = 0xFFFFFFFFull;  // page numbers travel as u32 (extents output)
constexpr uint32_t kMinRegionPages = 512;      // 2 MiB: a region is always whole 64-bit words
constexpr uint32_t kMaxRegionPages = 262144;   // 1 GiB

inline uint64_t BitmapBytes(uint64_t pages) { return (pages + 7) / 8; }
inline uint64_t RegionCount(uint64_t pages, uint32_t regionPages) {
  return (pages + regionPages - 1) / regionPages;
}
inline bool ValidRegionPages(uint64_t regionPages) {
  return regionPages >= kMinRegionPages && regionPages <= kMaxRegionPages &&
         (regionPages & (regionPages - 1)) == 0;
}

struct ExtentsResult {
  uint64_t returned;  // runs written to out (pairs startPage, lengthPages)
  uint64_t total;     // runs in the bitmap, also those beyond maxExtents
};

struct Kernels {
  /** Set bits among the first `pages`. */
  uint64_t (*count)(const uint8_t* bits, uint64_t pages);
  /** dst |= src on the first `pages` bits; returns the set bits of dst afterwards. */
  uint64_t (*orInto)(uint8_t* dst, const uint8_t* src, uint64_t pages);
  /** out = a & ~b on the first `pages` bits (out may be a or b, not a partial overlap); returns its set bits. */
  uint64_t (*andNot)(uint8_t* out, const uint8_t* a, const uint8_t* b, uint64_t pages);
  /** out[r] = set bits in pages [r*regionPages, (r+1)*regionPages), RegionCount() entries. */
  void (*regionHistogram)(const uint8_t* bits, uint64_t pages, uint32_t regionPages, uint32_t* out);
  /** Maximal runs of set bits, in page order, the first maxExtents of them into out. */
  ExtentsResult (*extents)(const uint8_t* bits, uint64_t pages, uint32_t* out, uint64_t maxExtents);
  /**
   * The memory-speed yardstick for benchmarks: reads every byte of src and writes every byte of
   * dst with plain (cache-allocating) loads and stores; returns a checksum of src.
   */
  uint64_t (*stream)(const uint8_t* src, size_t srcBytes, uint8_t* dst, size_t dstBytes);
};

/** The kernel set of one level; kAvx2 on a CPU without AVX2 returns the scalar set. */
const Kernels& KernelsFor(SimdLevel level);
inline const Kernels& Active() { return KernelsFor(ActiveLevel()); }

}  // namespace dpa::bitmap
