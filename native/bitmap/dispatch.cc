// Run-time choice between the scalar and AVX2 kernels. The level is process-wide (an atomic),
// so tests and `DPA_SIMD=scalar` (read in TypeScript, src/bitmap/index.ts) can switch it
// between calls; both levels keep the same state layout, so switching mid-stream is safe.
#include <atomic>

#include "bitmap/bitmap.h"
#include "bitmap/words.h"

namespace dpa::bitmap {
namespace {

bool DetectAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
         __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
}

std::atomic<int>& Level() {
  static std::atomic<int> level{static_cast<int>(CpuHasAvx2() ? SimdLevel::kAvx2 : SimdLevel::kScalar)};
  return level;
}

}  // namespace

bool CpuHasAvx2() {
  static const bool has = DetectAvx2();
  return has;
}

SimdLevel ActiveLevel() { return static_cast<SimdLevel>(Level().load(std::memory_order_relaxed)); }

bool SetActiveLevel(SimdLevel level) {
  if (level == SimdLevel::kAvx2 && !CpuHasAvx2()) return false;
  Level().store(static_cast<int>(level), std::memory_order_relaxed);
  return true;
}

const char* LevelName(SimdLevel level) { return level == SimdLevel::kAvx2 ? "avx2" : "scalar"; }

const Kernels& KernelsFor(SimdLevel level) {
  return level == SimdLevel::kAvx2 && CpuHasAvx2() ? detail::Avx2Kernels() : detail::ScalarKernels();
}

}  // namespace dpa::bitmap
