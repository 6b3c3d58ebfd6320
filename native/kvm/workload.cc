#include "kvm/workload.h"

#include <cmath>
#include <numeric>
#include <stdexcept>

#include "kvm/guest_image.h"

namespace dpa::kvm {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

namespace {
inline uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Xoshiro256::Xoshiro256(uint64_t seed) {
  uint64_t sm = seed;
  for (auto& w : s_) w = SplitMix64(&sm);
}

uint64_t Xoshiro256::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

double Xoshiro256::NextDouble() { return double(Next() >> 11) * 0x1.0p-53; }

uint64_t Xoshiro256::Below(uint64_t n) {
  unsigned __int128 m = (unsigned __int128)Next() * n;
  uint64_t low = uint64_t(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = (unsigned __int128)Next() * n;
      low = uint64_t(m);
    }
  }
  return uint64_t(m >> 64);
}

namespace {
// log1p(x)/x and expm1(x)/x, exact near 0 where the quotient would lose precision.
double Helper1(double x) { return std::fabs(x) > 1e-8 ? std::log1p(x) / x : 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x)); }
double Helper2(double x) { return std::fabs(x) > 1e-8 ? std::expm1(x) / x : 1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x)); }
}  // namespace

ZipfSampler::ZipfSampler(uint64_t n, double s) : n_(n), s_(s) {
  if (n < 1) throw std::out_of_range("zipf: n must be >= 1");
  if (!(s > 0)) throw std::out_of_range("zipf: exponent must be > 0");
  h_integral_x1_ = HIntegral(1.5) - 1.0;
  h_integral_n_ = HIntegral(double(n) + 0.5);
  threshold_ = 2.0 - HIntegralInverse(HIntegral(2.5) - H(2.0));
}

double ZipfSampler::H(double x) const { return std::exp(-s_ * std::log(x)); }

double ZipfSampler::HIntegral(double x) const {
  const double log_x = std::log(x);
  return Helper2((1.0 - s_) * log_x) * log_x;
}

double ZipfSampler::HIntegralInverse(double x) const {
  double t = x * (1.0 - s_);
  if (t < -1.0) t = -1.0;  // numerical guard: the exact value is never below -1
  return std::exp(Helper1(t) * x);
}

uint64_t ZipfSampler::Sample(Xoshiro256& rng) const {
  for (;;) {
    const double u = h_integral_n_ + rng.NextDouble() * (h_integral_x1_ - h_integral_n_);
    const double x = HIntegralInverse(u);
    double k = std::floor(x + 0.5);
    if (k < 1) k = 1;
    else if (k > double(n_)) k = double(n_);
    if (k - x <= threshold_ || u >= HIntegral(k + 0.5) - H(k)) return uint64_t(k);
  }
}

Workload::Workload(const WorkloadConfig& config, uint64_t guest_pages, uint32_t vcpus)
    : config_(config), guest_pages_(guest_pages), zipf_(config.hot_pages ? config.hot_pages : 1, config.zipf_s > 0 ? config.zipf_s : 1.0) {
  if (vcpus < 1 || vcpus > kMaxVcpus) throw std::out_of_range("vcpus must be 1..8");
  if (config.hot_pages < 1 || config.hot_pages > guest_pages) throw std::out_of_range("hotPages must be 1..guest pages");
  if (!(config.rate_pages_per_sec >= 0) || !std::isfinite(config.rate_pages_per_sec)) throw std::out_of_range("ratePagesPerSec must be >= 0");
  if (config.pattern == Pattern::kZipf && !(config.zipf_s > 0)) throw std::out_of_range("zipfS must be > 0");
  uint64_t sm = config.seed ^ 0x6a09e667f3bcc909ull;
  // Scatter the hot set over all of RAM with i -> (stride * i + offset) mod P: a bijection when
  // gcd(stride, P) = 1, O(1) memory, and neighbouring ranks land far apart (stride near P/phi).
  offset_ = SplitMix64(&sm) % guest_pages;
  uint64_t stride = guest_pages > 2 ? uint64_t(double(guest_pages) * 0.6180339887) + SplitMix64(&sm) % 1024 : 1;
  if (stride == 0) stride = 1;
  while (std::gcd(stride % guest_pages, guest_pages) != 1) ++stride;
  stride_ = stride % guest_pages;
  if (guest_pages == 1) stride_ = 0;
  for (uint32_t i = 0; i < vcpus; ++i) rngs_.emplace_back(config.seed * 0x9e3779b97f4a7c15ull + i + 1);
}

uint64_t Workload::NextIntervalWrites(double interval_sec) {
  carry_ += config_.rate_pages_per_sec * interval_sec;
  double whole = std::floor(carry_);
  carry_ -= whole;
  return uint64_t(whole);
}

void Workload::Plan(uint64_t writes, std::vector<Share>* shares) {
  const uint64_t n = rngs_.size();
  shares->resize(n);
  uint64_t cursor = cursor_;
  for (uint64_t i = 0; i < n; ++i) {
    Share& s = (*shares)[i];
    s.count = writes / n + (i < writes % n ? 1 : 0);
    s.cursor = cursor;
    cursor = (cursor + s.count) % config_.hot_pages;
  }
  cursor_ = cursor;
}

uint64_t Workload::HotPage(uint64_t index) const {
  if (config_.pattern == Pattern::kSequential) return (offset_ + index) % guest_pages_;
  return uint64_t(((unsigned __int128)stride_ * index + offset_) % guest_pages_);
}

void Workload::Fill(uint32_t vcpu, const Share& share, uint64_t* gpas) {
  Xoshiro256& rng = rngs_[vcpu].rng;
  const uint64_t hot = config_.hot_pages;
  switch (config_.pattern) {
    case Pattern::kSequential: {
      uint64_t pos = share.cursor;
      for (uint64_t j = 0; j < share.count; ++j) {
        gpas[j] = HotPage(pos) * kPageBytes;
        if (++pos == hot) pos = 0;
      }
      break;
    }
    case Pattern::kUniform:
      for (uint64_t j = 0; j < share.count; ++j) gpas[j] = HotPage(rng.Below(hot)) * kPageBytes;
      break;
    case Pattern::kZipf:
      for (uint64_t j = 0; j < share.count; ++j) gpas[j] = HotPage(zipf_.Sample(rng) - 1) * kPageBytes;
      break;
  }
}

}  // namespace dpa::kvm
