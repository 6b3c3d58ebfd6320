// A 64-bit content hash of one 4 KiB page, used to detect pages whose content changed between two
// scans of guest RAM. Two implementations (AVX2, scalar) compute bit-identical results; which one
// runs is chosen at run time (no global -mavx2).
//
// Construction (per page, keyed by a 64-bit seed expanded with splitmix64):
//   8 lanes of 64-bit accumulators; the page is 64 stripes of 64 bytes, word j of a stripe feeds
//   lane j:  dk = d ^ key[j];  acc[j] += lo32(dk) * hi32(dk);  acc[j^1] += d;  key[j] += step[j].
//   Every 16 stripes the lanes are scrambled (acc ^= acc >> 47; acc ^= sk[j]; acc *= P32), a
//   bijection per lane. The 8 lanes are folded to 64 bits with 64x64->128 multiplies and a final
//   avalanche (scalar code shared by both paths, so the paths cannot diverge there).
// Why these choices: the 32x32->64 multiply is one AVX2 instruction (vpmuludq), so a stripe costs
// ~8 vector ops for 64 bytes; the raw-data add into the neighbour lane keeps every input bit even
// when a half of dk is zero; the per-stripe key makes the hash depend on where data sits (moving
// a block changes the hash).
// Collision argument (what the scanner needs is P[hash(new) == hash(old) | content changed]):
//   - a change confined to one 8-byte word always changes the 512-bit lane state (the neighbour
//     lane receives a different addend, and every later step is a bijection of the state), so
//     such a change is missed only if the final 512->64-bit fold collides;
//   - for other changes, and for the fold, we rely on the construction being that of XXH3's
//     long-input loop (keyed 32x32 multiply-accumulate, periodic bijective scramble, 128-bit
//     multiply fold), which passes SMHasher's collision tests at the rate of an ideal 64-bit
//     hash: ~2^-64 per changed page. That is an argument by construction, not a proof; the
//     native test checks that all 32768 single-bit flips of a page give distinct hashes. At 10^6
//     changed pages per second, 2^-64 is one missed change in ~5*10^5 years.
//   It is NOT collision-resistant against an adversary who knows the key: a guest could in
//   principle hide writes from the scanner. The key is random per scanner and never leaves the
//   process; a hidden write only skews the dirty-rate estimate, never migration correctness (QEMU
//   migrates with its own dirty log).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dpa {
namespace guestmem {

constexpr size_t kPageBytes = 4096;

struct HashKey {
  uint64_t init[8];   // initial accumulators
  uint64_t key[8];    // per-lane key of stripe 0
  uint64_t step[8];   // per-stripe key increment (odd)
  uint64_t sk[8];     // scramble keys
  uint64_t fk[8];     // fold keys
};

HashKey MakeHashKey(uint64_t seed);

enum class HashImpl { kAuto, kScalar, kAvx2 };

// True when the CPU supports AVX2 (checked once).
bool CpuHasAvx2();

// Hashes `n` consecutive pages at `pages` into out[0..n). kAuto picks AVX2 when available.
// Throws std::out_of_range when kAvx2 is requested on a CPU without it.
using HashPagesFn = void (*)(const HashKey& key, const uint8_t* pages, size_t n, uint64_t* out);
HashPagesFn PickHashPages(HashImpl impl);

void HashPagesScalar(const HashKey& key, const uint8_t* pages, size_t n, uint64_t* out);
void HashPagesAvx2(const HashKey& key, const uint8_t* pages, size_t n, uint64_t* out);

}  // namespace guestmem
}  // namespace dpa
