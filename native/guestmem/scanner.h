// Reads another process's memory region (a QEMU guest's RAM) with process_vm_readv, hashes each
// 4 KiB page and compares it with the hash from the previous scan. No Node headers: the scan loop
// (scan_loop.h) drives it on its own thread, the native unit test drives it directly.
//
// Semantics: a page is "dirty" for an interval when its content differs from the content read at
// the previous scan (content change), unlike KVM's dirty log, which flags every write even when
// it stores the same bytes. Writing identical bytes is therefore invisible here, and a page
// changed and changed back between two scans is missed.
//
// Memory cost: 8 bytes of previous hash per page = 2 MiB per GiB of guest RAM (0.2 %), plus one
// chunk buffer (chunkBytes) and the caller's bitmaps (32 KiB per GiB each).
//
// Pages absent from the target's page tables (never touched, or swapped out) are, with skipAbsent,
// neither read nor compared: reading them would make the kernel allocate (memfd/shmem) or swap in
// memory in the target, i.e. scanning would grow an idle VM's resident size to its full RAM size.
// An absent page keeps its previous hash; a never-seen page starts as the hash of a zero page, so
// a page that appears with zero content is not counted and one that appears with data is.
// "Absent" means absent from the *target's* page tables: a memfd page changed only through
// another process's mapping (a vhost-user backend) while the target has it unmapped is seen
// once the target maps it again. For a KVM or TCG guest every page the guest can reach is mapped
// in QEMU (KVM's MMU notifiers drop the guest mapping whenever QEMU's entry goes).
#pragma once
#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "guestmem/page_hash.h"

namespace dpa {
namespace guestmem {

// One contiguous piece of the region in the target's address space. Page-aligned; the pieces
// are concatenated in order to form the page index space (page p of the region).
struct Segment {
  uint64_t address = 0;
  uint64_t bytes = 0;
};

struct ScannerConfig {
  pid_t pid = 0;
  std::vector<Segment> segments;
  size_t chunkBytes = 1 << 20;  // bytes per process_vm_readv call, multiple of 4096
  bool sampled = false;
  double sampleFraction = 1.0;  // (0, 1]
  uint32_t strataPages = 512;   // stratum size for sampling
  uint32_t resampleEvery = 8;   // scans between redraws of the sample (1 = every scan)
  bool skipAbsent = true;       // consult /proc/PID/pagemap, do not read absent pages
  HashImpl hash = HashImpl::kAuto;
  uint64_t seed = 0;            // hash key and sampling RNG; 0 = random (getrandom)
};

struct ScanStats {
  bool baseline = false;      // first scan: hashes recorded, nothing compared
  bool cancelled = false;     // stopped early through the cancel flag; other fields partial
  uint64_t pagesCompared = 0; // pages whose change was tested (all pages, or the sample)
  uint64_t pagesRead = 0;     // pages copied from the target (absent pages are not)
  uint64_t pagesAbsent = 0;   // pages of the plan skipped as absent
  uint64_t dirtyPages = 0;    // bits set in the bitmap (changed pages among those compared)
  double dirtyEstimate = 0;   // Horvitz-Thompson estimate for the whole region (= dirtyPages if exact)
  uint64_t bytesRead = 0;
  uint64_t wallNs = 0;
  uint64_t cpuNs = 0;         // CPU time of the scanning thread
};

class Scanner {
 public:
  // Opens a pidfd (ESRCH when the process does not exist), probes one byte of every segment with
  // process_vm_readv (EPERM without ptrace rights, EFAULT when not mapped) and, with skipAbsent,
  // opens /proc/PID/pagemap. Throws SysError or std::out_of_range (bad config).
  explicit Scanner(const ScannerConfig& config);
  ~Scanner();
  Scanner(const Scanner&) = delete;
  Scanner& operator=(const Scanner&) = delete;

  uint64_t pages() const { return pages_; }
  size_t bitmapBytes() const { return ((pages_ + 63) / 64) * 8; }
  bool usesAvx2() const { return hashPages_ == HashPagesAvx2; }
  int pidfd() const { return pidfd_; }

  // One pass. The first call records the baseline (no bits). `bitmap` (bitmapBytes(), may be
  // null) is cleared, then gets one bit per changed page. Returns early, with stats.cancelled,
  // when *cancel becomes true. Throws SysError when a read fails (ESRCH, EFAULT, ...).
  ScanStats Scan(uint8_t* bitmap, const std::atomic<bool>* cancel = nullptr);

  // True once the target process has exited (pidfd readable).
  bool TargetExited() const;

 private:
  enum : uint8_t { kCompare = 1, kStore = 2 };

  void DrawSample(std::vector<uint32_t>& out, std::vector<double>& weights);
  void BuildPlan();
  void ProcessBatch(const uint32_t* pages, const uint8_t* flags, size_t n, uint8_t* bitmap, ScanStats& st);
  void ReadPresent(const uint32_t* pages, uint64_t segAddr, uint64_t segFirst, ScanStats& st);
  uint64_t NextRandom();

  ScannerConfig cfg_;
  int pidfd_ = -1;
  int pagemapFd_ = -1;
  uint64_t pages_ = 0;
  std::vector<uint64_t> segFirstPage_;  // region page index where each segment starts (+ end)
  HashKey key_;
  HashPagesFn hashPages_ = nullptr;
  uint64_t zeroHash_ = 0;
  std::vector<uint64_t> prev_;          // previous hash per page
  std::vector<uint8_t> chunk_;          // local copy of the pages being hashed
  std::vector<uint64_t> hashes_;        // hashes of the chunk
  std::vector<uint64_t> pagemap_;       // pagemap entries of the current batch span
  std::vector<uint32_t> present_;       // batch positions that were read (-> chunk slot)
  std::vector<iovec> remote_;
  std::vector<uint8_t> segRead_;        // segments with at least one page read this scan
  uint64_t scans_ = 0;
  uint64_t rng_ = 0;
  // Sampling state: `cur_` is the sample the coming scan compares (its baseline was recorded by
  // the previous scan); weights are N_h / n_h per stratum for the Horvitz-Thompson estimate.
  std::vector<uint32_t> cur_, next_;
  std::vector<double> curWeight_, nextWeight_;
  std::vector<uint32_t> planPages_;
  std::vector<uint8_t> planFlags_;
  std::vector<uint64_t> pickBits_;
};

}  // namespace guestmem
}  // namespace dpa
