#include "guestmem/scanner.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/errors.h"

namespace dpa {
namespace guestmem {
namespace {

constexpr size_t kMaxRemoteIov = IOV_MAX;       // process_vm_readv limit per call (1024)
constexpr uint32_t kMaxPagemapSpan = 1u << 16;  // pages of pagemap read at once (512 KiB)
constexpr uint64_t kPagePresent = 1ull << 63;
constexpr uint64_t kPageSwapped = 1ull << 62;

uint64_t NowNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// Closes the fd unless released; keeps the constructor exception-safe.
struct FdGuard {
  int& fd;
  bool armed = true;
  ~FdGuard() {
    if (armed && fd >= 0) {
      close(fd);
      fd = -1;
    }
  }
};

}  // namespace

Scanner::Scanner(const ScannerConfig& config) : cfg_(config) {
  if (cfg_.segments.empty()) throw std::out_of_range("segments: at least one segment is required");
  segFirstPage_.push_back(0);
  for (const Segment& s : cfg_.segments) {
    if (s.address % kPageBytes || s.bytes % kPageBytes || s.bytes == 0) {
      throw std::out_of_range("segments: address and bytes must be non-zero multiples of 4096");
    }
    pages_ += s.bytes / kPageBytes;
    segFirstPage_.push_back(pages_);
  }
  if (pages_ >= UINT32_MAX) throw std::out_of_range("segments: at most 2^32-1 pages (16 TiB)");
  if (cfg_.chunkBytes < kPageBytes || cfg_.chunkBytes % kPageBytes || cfg_.chunkBytes > (256u << 20)) {
    throw std::out_of_range("chunkBytes: must be a multiple of 4096 from 4096 to 256 MiB");
  }
  if (!(cfg_.sampleFraction > 0 && cfg_.sampleFraction <= 1)) throw std::out_of_range("sampleFraction: must be in (0, 1]");
  if (cfg_.strataPages < 1 || cfg_.strataPages > 65536) throw std::out_of_range("strataPages: must be 1..65536");
  if (cfg_.resampleEvery < 1) throw std::out_of_range("resampleEvery: must be >= 1");
  hashPages_ = PickHashPages(cfg_.hash);

  pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, cfg_.pid, 0));  // pidfds are always O_CLOEXEC
  if (pidfd_ < 0) ThrowSys("pidfd_open", errno, "pid " + std::to_string(cfg_.pid));
  FdGuard pidGuard{pidfd_};

  // Fail at open time, not on the scan thread, for permission and address errors.
  for (const Segment& s : cfg_.segments) {
    char byte;
    iovec local{&byte, 1};
    iovec remote{reinterpret_cast<void*>(s.address), 1};
    if (process_vm_readv(cfg_.pid, &local, 1, &remote, 1, 0) != 1) {
      ThrowSys("process_vm_readv", errno, "probing " + Hex(s.address) + " in pid " + std::to_string(cfg_.pid));
    }
  }
  if (cfg_.skipAbsent) {
    const std::string path = "/proc/" + std::to_string(cfg_.pid) + "/pagemap";
    pagemapFd_ = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (pagemapFd_ < 0) ThrowSys("open", errno, path);
  }
  FdGuard pagemapGuard{pagemapFd_};

  uint64_t seed = cfg_.seed;
  while (seed == 0) {
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed) ThrowSys("getrandom", errno);
  }
  key_ = MakeHashKey(seed);
  rng_ = seed ^ 0x6A09E667F3BCC909ull;
  std::vector<uint8_t> zero(kPageBytes, 0);
  hashPages_(key_, zero.data(), 1, &zeroHash_);

  const size_t chunkPages = cfg_.chunkBytes / kPageBytes;
  prev_.assign(pages_, zeroHash_);
  chunk_.resize(cfg_.chunkBytes);
  hashes_.resize(chunkPages);
  present_.reserve(chunkPages);
  pickBits_.resize((cfg_.strataPages + 63) / 64);
  pidGuard.armed = false;
  pagemapGuard.armed = false;
}

Scanner::~Scanner() {
  if (pagemapFd_ >= 0) close(pagemapFd_);
  if (pidfd_ >= 0) close(pidfd_);
}

bool Scanner::TargetExited() const {
  pollfd p{pidfd_, POLLIN, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP)) != 0;
}

uint64_t Scanner::NextRandom() {
  // splitmix64: sampling needs independence from the workload, not cryptographic strength.
  uint64_t z = (rng_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Stratified sample: from each stratum of strataPages pages, n_h = round(f * N_h) (at least 1)
// distinct pages chosen uniformly (Floyd's algorithm), in ascending page order.
void Scanner::DrawSample(std::vector<uint32_t>& out, std::vector<double>& weights) {
  const uint64_t S = cfg_.strataPages;
  const uint64_t strata = (pages_ + S - 1) / S;
  out.clear();
  weights.assign(strata, 1.0);
  for (uint64_t h = 0; h < strata; ++h) {
    const uint64_t Nh = std::min<uint64_t>(S, pages_ - h * S);
    uint64_t nh = static_cast<uint64_t>(std::llround(cfg_.sampleFraction * static_cast<double>(Nh)));
    nh = std::clamp<uint64_t>(nh, 1, Nh);
    std::fill(pickBits_.begin(), pickBits_.end(), 0);
    for (uint64_t j = Nh - nh; j < Nh; ++j) {
      const uint64_t t = static_cast<uint64_t>((static_cast<unsigned __int128>(NextRandom()) * (j + 1)) >> 64);
      const uint64_t pick = (pickBits_[t / 64] >> (t % 64)) & 1 ? j : t;
      pickBits_[pick / 64] |= 1ull << (pick % 64);
    }
    for (size_t w = 0; w < pickBits_.size(); ++w) {
      for (uint64_t bits = pickBits_[w]; bits; bits &= bits - 1) {
        out.push_back(static_cast<uint32_t>(h * S + w * 64 + static_cast<uint64_t>(__builtin_ctzll(bits))));
      }
    }
    weights[h] = static_cast<double>(Nh) / static_cast<double>(nh);
  }
}

// The sampled scan plan. Scan 0 records the baseline of the first sample; a redraw scan compares
// the current sample and records the baseline of the next one (reading their union once); other
// scans compare and re-record the current sample.
void Scanner::BuildPlan() {
  planPages_.clear();
  planFlags_.clear();
  const bool baseline = scans_ == 0;
  const bool redraw = baseline || scans_ % cfg_.resampleEvery == 0;
  if (!redraw) {
    planPages_ = cur_;
    planFlags_.assign(cur_.size(), kCompare | kStore);
    return;
  }
  DrawSample(next_, nextWeight_);
  if (baseline) {
    planPages_ = next_;
    planFlags_.assign(next_.size(), kStore);
    return;
  }
  size_t i = 0, j = 0;
  while (i < cur_.size() || j < next_.size()) {
    if (j == next_.size() || (i < cur_.size() && cur_[i] < next_[j])) {
      planPages_.push_back(cur_[i++]);
      planFlags_.push_back(kCompare);
    } else if (i == cur_.size() || next_[j] < cur_[i]) {
      planPages_.push_back(next_[j++]);
      planFlags_.push_back(kStore);
    } else {
      planPages_.push_back(cur_[i++]);
      planFlags_.push_back(kCompare | kStore);
      ++j;
    }
  }
}

ScanStats Scanner::Scan(uint8_t* bitmap, const std::atomic<bool>* cancel) {
  ScanStats st;
  const uint64_t wall0 = NowNs(CLOCK_MONOTONIC), cpu0 = NowNs(CLOCK_THREAD_CPUTIME_ID);
  st.baseline = scans_ == 0;
  if (bitmap) std::memset(bitmap, 0, bitmapBytes());
  segRead_.assign(cfg_.segments.size(), 0);
  const size_t chunkPages = cfg_.chunkBytes / kPageBytes;
  const bool redraw = cfg_.sampled && (st.baseline || scans_ % cfg_.resampleEvery == 0);

  const uint32_t* pages;
  const uint8_t* flags;
  size_t count;
  std::vector<uint32_t> seq;
  std::vector<uint8_t> seqFlags;
  if (cfg_.sampled) {
    BuildPlan();
    pages = planPages_.data();
    flags = planFlags_.data();
    count = planPages_.size();
  } else {
    seq.resize(chunkPages);
    seqFlags.assign(chunkPages, st.baseline ? kStore : (kCompare | kStore));
    pages = nullptr;
    flags = seqFlags.data();
    count = pages_;
  }

  size_t seg = 0;
  for (size_t i = 0; i < count;) {
    if (cancel && cancel->load(std::memory_order_relaxed)) {
      st.cancelled = true;
      break;
    }
    const uint32_t first = pages ? pages[i] : static_cast<uint32_t>(i);
    while (first >= segFirstPage_[seg + 1]) ++seg;
    const uint64_t segEnd = segFirstPage_[seg + 1];
    size_t n;
    const uint32_t* batch;
    if (pages) {
      // A batch stays inside one segment and one pagemap span.
      n = 0;
      while (i + n < count && n < chunkPages && pages[i + n] < segEnd && pages[i + n] - first < kMaxPagemapSpan) ++n;
      batch = pages + i;
    } else {
      n = static_cast<size_t>(std::min<uint64_t>(chunkPages, segEnd - first));
      for (size_t k = 0; k < n; ++k) seq[k] = first + static_cast<uint32_t>(k);
      batch = seq.data();
    }
    ProcessBatch(batch, pages ? flags + i : flags, n, bitmap, st);
    i += n;
  }
  if (!st.cancelled) {
    // pagemap reports an unmapped range like absent pages: a segment from which nothing was read
    // is probed so that a vanished mapping ends the source (EFAULT) instead of reading as clean.
    for (size_t k = 0; k < cfg_.segments.size(); ++k) {
      if (segRead_[k]) continue;
      char byte;
      iovec local{&byte, 1};
      iovec remote{reinterpret_cast<void*>(cfg_.segments[k].address), 1};
      if (process_vm_readv(cfg_.pid, &local, 1, &remote, 1, 0) != 1) {
        ThrowSys("process_vm_readv", errno, "probing " + Hex(cfg_.segments[k].address) + " of pid " + std::to_string(cfg_.pid));
      }
    }
    if (redraw) {
      cur_.swap(next_);
      curWeight_.swap(nextWeight_);
    }
    ++scans_;
  }
  if (!cfg_.sampled) st.dirtyEstimate = static_cast<double>(st.dirtyPages);
  st.wallNs = NowNs(CLOCK_MONOTONIC) - wall0;
  st.cpuNs = NowNs(CLOCK_THREAD_CPUTIME_ID) - cpu0;
  return st;
}

void Scanner::ProcessBatch(const uint32_t* pages, const uint8_t* flags, size_t n, uint8_t* bitmap, ScanStats& st) {
  size_t seg = std::upper_bound(segFirstPage_.begin(), segFirstPage_.end(), pages[0]) - segFirstPage_.begin() - 1;
  const uint64_t segAddr = cfg_.segments[seg].address;
  const uint64_t segFirst = segFirstPage_[seg];
  auto addrOf = [&](uint32_t p) { return segAddr + (p - segFirst) * kPageBytes; };

  present_.clear();
  if (pagemapFd_ >= 0) {
    const size_t span = pages[n - 1] - pages[0] + 1;
    pagemap_.resize(span);
    const off_t offset = static_cast<off_t>(addrOf(pages[0]) / kPageBytes * sizeof(uint64_t));
    size_t got = 0;
    while (got < span * sizeof(uint64_t)) {
      const ssize_t r = pread(pagemapFd_, reinterpret_cast<uint8_t*>(pagemap_.data()) + got,
                              span * sizeof(uint64_t) - got, offset + static_cast<off_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) ThrowSys("pread", errno, "/proc/" + std::to_string(cfg_.pid) + "/pagemap");
      // pagemap reads end early only when the target's address space is gone.
      if (r == 0) ThrowSys("pread", TargetExited() ? ESRCH : EFAULT, "/proc/" + std::to_string(cfg_.pid) + "/pagemap ended early");
      got += static_cast<size_t>(r);
    }
    for (size_t k = 0; k < n; ++k) {
      const uint64_t e = pagemap_[pages[k] - pages[0]];
      if ((e & kPagePresent) && !(e & kPageSwapped)) {
        present_.push_back(static_cast<uint32_t>(k));
      } else {
        ++st.pagesAbsent;
      }
    }
  } else {
    for (size_t k = 0; k < n; ++k) present_.push_back(static_cast<uint32_t>(k));
  }
  for (size_t k = 0; k < n; ++k) st.pagesCompared += (flags[k] & kCompare) ? 1 : 0;
  if (present_.empty()) return;
  segRead_[seg] = 1;

  ReadPresent(pages, segAddr, segFirst, st);
  const size_t m = present_.size();
  hashPages_(key_, chunk_.data(), m, hashes_.data());
  const double* weights = cfg_.sampled ? curWeight_.data() : nullptr;
  for (size_t slot = 0; slot < m; ++slot) {
    const size_t k = present_[slot];
    const uint32_t p = pages[k];
    const uint64_t h = hashes_[slot];
    if ((flags[k] & kCompare) && prev_[p] != h) {
      if (bitmap) bitmap[p / 8] |= static_cast<uint8_t>(1u << (p % 8));
      ++st.dirtyPages;
      if (weights) st.dirtyEstimate += weights[p / cfg_.strataPages];
    }
    if (flags[k] & kStore) prev_[p] = h;
  }
}

// Copies the present pages of the current batch (present_, batch positions) into chunk_ in slot
// order: neighbouring pages share one remote iovec, at most IOV_MAX remote iovecs per call, and a
// short count (the target unmapped or exited part-way) continues from where the kernel stopped,
// so the next call reports the errno.
void Scanner::ReadPresent(const uint32_t* pages, uint64_t segAddr, uint64_t segFirst, ScanStats& st) {
  remote_.clear();
  for (size_t slot = 0; slot < present_.size(); ++slot) {
    const uint64_t addr = segAddr + (pages[present_[slot]] - segFirst) * kPageBytes;
    if (!remote_.empty() && reinterpret_cast<uint64_t>(remote_.back().iov_base) + remote_.back().iov_len == addr) {
      remote_.back().iov_len += kPageBytes;
    } else {
      remote_.push_back(iovec{reinterpret_cast<void*>(addr), kPageBytes});
    }
  }
  uint8_t* dst = chunk_.data();
  size_t r0 = 0;
  while (r0 < remote_.size()) {
    const size_t nr = std::min(kMaxRemoteIov, remote_.size() - r0);
    size_t want = 0;
    for (size_t k = r0; k < r0 + nr; ++k) want += remote_[k].iov_len;
    iovec local{dst, want};
    const ssize_t got = process_vm_readv(cfg_.pid, &local, 1, &remote_[r0], nr, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const int err = got < 0 ? errno : EFAULT;
      ThrowSys("process_vm_readv", err,
               "reading " + std::to_string(want) + " bytes at " + Hex(reinterpret_cast<uint64_t>(remote_[r0].iov_base)) +
                   " of pid " + std::to_string(cfg_.pid));
    }
    st.bytesRead += static_cast<uint64_t>(got);
    dst += got;
    size_t left = static_cast<size_t>(got);
    while (left > 0 && left >= remote_[r0].iov_len) left -= remote_[r0++].iov_len;
    if (left > 0) {
      remote_[r0].iov_base = static_cast<uint8_t*>(remote_[r0].iov_base) + left;
      remote_[r0].iov_len -= left;
    }
  }
  st.pagesRead += present_.size();
}

}  // namespace guestmem
}  // namespace dpa
