// The calibration workload: which guest pages each vCPU writes in each interval. Deterministic
// for a given (seed, vcpus, guest size, pattern): the same run can be replayed exactly.
#pragma once
#include <cstdint>
#include <vector>

namespace dpa::kvm {

// splitmix64 step: used to expand one 64-bit seed into independent generator states.
uint64_t SplitMix64(uint64_t* state);

// xoshiro256** (Blackman & Vigna): fast, 256-bit state, passes BigCrush.
class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed);
  uint64_t Next();
  double NextDouble();          // uniform in [0, 1), 53 bits
  uint64_t Below(uint64_t n);   // uniform in [0, n), n >= 1 (Lemire's nearly-divisionless method)

 private:
  uint64_t s_[4];
};

// Zipf over ranks 1..n with exponent s > 0 by rejection-inversion (Hörmann & Derflinger 1996,
// as in Apache Commons RNG): O(1) memory and time, so a hot set of millions of pages needs no CDF.
class ZipfSampler {
 public:
  ZipfSampler(uint64_t n, double s);
  uint64_t Sample(Xoshiro256& rng) const;

 private:
  double H(double x) const;
  double HIntegral(double x) const;
  double HIntegralInverse(double x) const;
  uint64_t n_;
  double s_;
  double h_integral_x1_;
  double h_integral_n_;
  double threshold_;
};

enum class Pattern { kUniform, kSequential, kZipf };

struct WorkloadConfig {
  Pattern pattern = Pattern::kUniform;
  double rate_pages_per_sec = 0;  // page writes per second (not distinct pages)
  uint64_t hot_pages = 1;         // 1..guest pages
  double zipf_s = 1.0;            // zipf exponent, > 0
  uint64_t seed = 1;
};

// One interval's share of work for one vCPU.
struct Share {
  uint64_t count = 0;   // page writes
  uint64_t cursor = 0;  // sequential: first hot-set position of this share
};

class Workload {
 public:
  // Throws std::out_of_range on an impossible configuration (hot set larger than RAM, s <= 0).
  Workload(const WorkloadConfig& config, uint64_t guest_pages, uint32_t vcpus);

  // Writes in the next interval: rate × interval, carrying the fractional remainder so that
  // e.g. 150 writes/s at 100 Hz yields 1, 2, 1, 2, ... and no rate is lost to rounding.
  uint64_t NextIntervalWrites(double interval_sec);

  // Splits `writes` over the vCPUs (as evenly as possible) and advances the sequential cursor.
  void Plan(uint64_t writes, std::vector<Share>* shares);

  // Fills gpas[0..share.count) with guest-physical addresses to write. Each vCPU uses only its
  // own generator, so vCPU threads may call this concurrently for different `vcpu`.
  void Fill(uint32_t vcpu, const Share& share, uint64_t* gpas);

  // Guest page number of hot-set position `index` (0 = hottest for zipf).
  uint64_t HotPage(uint64_t index) const;

  uint64_t hot_pages() const { return config_.hot_pages; }

 private:
  WorkloadConfig config_;
  uint64_t guest_pages_;
  uint64_t stride_;  // multiplier of the affine bijection, coprime with guest_pages_
  uint64_t offset_;
  uint64_t cursor_ = 0;
  double carry_ = 0;
  ZipfSampler zipf_;
  struct alignas(64) PaddedRng {  // one cache line each: vCPU threads draw concurrently
    explicit PaddedRng(uint64_t seed) : rng(seed) {}
    Xoshiro256 rng;
  };
  std::vector<PaddedRng> rngs_;
};

}  // namespace dpa::kvm
