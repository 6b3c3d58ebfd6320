#include "guestmem/page_hash.h"

#include <immintrin.h>

#include <cstring>
#include <stdexcept>

namespace dpa {
namespace guestmem {
namespace {

constexpr uint64_t kPrime32 = 0x9E3779B1ull;  // scramble multiplier, odd so the multiply is a bijection
constexpr uint64_t kPrime64 = 0x9E3779B185EBCA87ull;
constexpr int kStripes = kPageBytes / 64;
constexpr int kScrambleEvery = 16;  // stripes between scrambles (1 KiB)

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fold(uint64_t a, uint64_t b) {
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(p) ^ static_cast<uint64_t>(p >> 64);
}

// Shared by both paths so that their results can only differ in the lane state.
uint64_t Finish(const HashKey& key, const uint64_t acc[8]) {
  uint64_t h = kPageBytes * kPrime64;
  for (int i = 0; i < 4; ++i) h += Fold(acc[2 * i] ^ key.fk[2 * i], acc[2 * i + 1] ^ key.fk[2 * i + 1]);
  h ^= h >> 37;
  h *= 0x165667919E3779F9ull;
  h ^= h >> 32;
  return h;
}

uint64_t HashPageScalar(const HashKey& key, const uint8_t* page) {
  uint64_t acc[8], k[8];
  std::memcpy(acc, key.init, sizeof acc);
  std::memcpy(k, key.key, sizeof k);
  for (int s = 0; s < kStripes; ++s) {
    uint64_t d[8];
    std::memcpy(d, page + s * 64, sizeof d);
    for (int j = 0; j < 8; ++j) {
      const uint64_t dk = d[j] ^ k[j];
      acc[j] += (dk & 0xFFFFFFFFull) * (dk >> 32);
      acc[j ^ 1] += d[j];
      k[j] += key.step[j];
    }
    if (s % kScrambleEvery == kScrambleEvery - 1) {
      for (int j = 0; j < 8; ++j) {
        uint64_t a = acc[j];
        a ^= a >> 47;
        a ^= key.sk[j];
        acc[j] = a * kPrime32;
      }
    }
  }
  return Finish(key, acc);
}

__attribute__((target("avx2"))) inline __m256i Scramble(__m256i a, __m256i sk, __m256i prime) {
  a = _mm256_xor_si256(a, _mm256_srli_epi64(a, 47));
  a = _mm256_xor_si256(a, sk);
  // 64x32-bit multiply from two 32x32->64 products (AVX2 has no 64-bit lane multiply).
  const __m256i lo = _mm256_mul_epu32(a, prime);
  const __m256i hi = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), prime);
  return _mm256_add_epi64(lo, _mm256_slli_epi64(hi, 32));
}

__attribute__((target("avx2"))) inline __m256i Load4(const uint64_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

__attribute__((target("avx2"))) uint64_t HashPageAvx2(const HashKey& key, const uint8_t* page) {
  __m256i a0 = Load4(key.init), a1 = Load4(key.init + 4);
  __m256i k0 = Load4(key.key), k1 = Load4(key.key + 4);
  const __m256i s0 = Load4(key.step), s1 = Load4(key.step + 4);
  const __m256i sk0 = Load4(key.sk), sk1 = Load4(key.sk + 4);
  const __m256i prime = _mm256_set1_epi64x(static_cast<long long>(kPrime32));
  for (int block = 0; block < kStripes / kScrambleEvery; ++block) {
    for (int i = 0; i < kScrambleEvery; ++i) {
      const uint8_t* p = page + (block * kScrambleEvery + i) * 64;
      const __m256i d0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256i d1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
      const __m256i dk0 = _mm256_xor_si256(d0, k0);
      const __m256i dk1 = _mm256_xor_si256(d1, k1);
      a0 = _mm256_add_epi64(a0, _mm256_mul_epu32(dk0, _mm256_srli_epi64(dk0, 32)));
      a1 = _mm256_add_epi64(a1, _mm256_mul_epu32(dk1, _mm256_srli_epi64(dk1, 32)));
      // Lane j^1 gets word j: swap the 64-bit halves of each 128-bit half.
      a0 = _mm256_add_epi64(a0, _mm256_shuffle_epi32(d0, _MM_SHUFFLE(1, 0, 3, 2)));
      a1 = _mm256_add_epi64(a1, _mm256_shuffle_epi32(d1, _MM_SHUFFLE(1, 0, 3, 2)));
      k0 = _mm256_add_epi64(k0, s0);
      k1 = _mm256_add_epi64(k1, s1);
    }
    a0 = Scramble(a0, sk0, prime);
    a1 = Scramble(a1, sk1, prime);
  }
  alignas(32) uint64_t acc[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(acc), a0);
  _mm256_store_si256(reinterpret_cast<__m256i*>(acc + 4), a1);
  return Finish(key, acc);
}

}  // namespace

HashKey MakeHashKey(uint64_t seed) {
  HashKey k;
  uint64_t state = seed;
  for (int j = 0; j < 8; ++j) k.init[j] = SplitMix64(state);
  for (int j = 0; j < 8; ++j) k.key[j] = SplitMix64(state);
  for (int j = 0; j < 8; ++j) k.step[j] = SplitMix64(state) | 1;
  for (int j = 0; j < 8; ++j) k.sk[j] = SplitMix64(state);
  for (int j = 0; j < 8; ++j) k.fk[j] = SplitMix64(state);
  return k;
}

bool CpuHasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

void HashPagesScalar(const HashKey& key, const uint8_t* pages, size_t n, uint64_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = HashPageScalar(key, pages + i * kPageBytes);
}

__attribute__((target("avx2"))) void HashPagesAvx2(const HashKey& key, const uint8_t* pages, size_t n,
                                                   uint64_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = HashPageAvx2(key, pages + i * kPageBytes);
}

HashPagesFn PickHashPages(HashImpl impl) {
  switch (impl) {
    case HashImpl::kScalar:
      return HashPagesScalar;
    case HashImpl::kAvx2:
      if (!CpuHasAvx2()) throw std::out_of_range("hash: 'avx2' requested but this CPU has no AVX2");
      return HashPagesAvx2;
    case HashImpl::kAuto:
      break;
  }
  return CpuHasAvx2() ? HashPagesAvx2 : HashPagesScalar;
}

}  // namespace guestmem
}  // namespace dpa
