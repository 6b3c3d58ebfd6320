// Guest-memory scanner core: hash paths agree, the hash notices small changes, scans of this
// process's own memory (process_vm_readv on self) find exactly the pages changed, absent pages
// are not faulted in, sampling is consistent with exact mode, and the scan loop ends with ESRCH
// when its target (a forked child) dies.
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "guestmem/page_hash.h"
#include "guestmem/scan_loop.h"
#include "guestmem/scanner.h"
#include "test_util.h"

using namespace dpa::guestmem;

namespace {

constexpr size_t kPage = 4096;

std::vector<uint64_t> HashAll(HashPagesFn fn, const HashKey& key, const std::vector<uint8_t>& buf) {
  std::vector<uint64_t> out(buf.size() / kPage);
  fn(key, buf.data(), out.size(), out.data());
  return out;
}

void TestHashPathsAgree() {
  if (!CpuHasAvx2()) {
    std::fprintf(stderr, "note: no AVX2 on this CPU, only the scalar hash is tested\n");
    return;
  }
  std::mt19937_64 rng(7);
  for (uint64_t seed : {1ull, 0x123456789abcdefull, ~0ull}) {
    const HashKey key = MakeHashKey(seed);
    std::vector<uint8_t> buf(512 * kPage);
    for (auto& b : buf) b = static_cast<uint8_t>(rng());
    std::memset(buf.data(), 0, kPage);              // zero page
    std::memset(buf.data() + kPage, 0xff, kPage);   // all ones
    for (size_t i = 0; i < kPage; i += 8) buf[2 * kPage + i] = 0x80;  // sparse high bits
    const auto scalar = HashAll(HashPagesScalar, key, buf);
    const auto avx2 = HashAll(HashPagesAvx2, key, buf);
    CHECK(scalar == avx2);
    // Unaligned input (the scanner's buffer is aligned, callers' buffers need not be).
    std::vector<uint8_t> shifted(buf.size() + 1);
    std::memcpy(shifted.data() + 1, buf.data(), buf.size());
    std::vector<uint64_t> u(buf.size() / kPage);
    HashPagesAvx2(key, shifted.data() + 1, u.size(), u.data());
    CHECK(u == scalar);
  }
}

void TestHashNoticesSmallChanges() {
  const HashKey key = MakeHashKey(42);
  const HashPagesFn hash = PickHashPages(HashImpl::kAuto);
  std::mt19937_64 rng(11);
  std::vector<uint8_t> page(kPage);
  for (auto& b : page) b = static_cast<uint8_t>(rng());
  uint64_t h0;
  hash(key, page.data(), 1, &h0);
  // Every single-bit flip: 32768 variants, all different from the original and from each other.
  std::vector<uint64_t> seen;
  seen.reserve(kPage * 8 + 1);
  seen.push_back(h0);
  for (size_t bit = 0; bit < kPage * 8; ++bit) {
    page[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    uint64_t h;
    hash(key, page.data(), 1, &h);
    seen.push_back(h);
    page[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
  std::sort(seen.begin(), seen.end());
  CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
  // Moving data: swapping two 8-byte words (same lane, different stripes) or two 64-byte blocks.
  std::vector<uint8_t> swapped = page;
  std::swap_ranges(swapped.begin() + 8, swapped.begin() + 16, swapped.begin() + 8 + 64 * 5);
  uint64_t h;
  hash(key, swapped.data(), 1, &h);
  CHECK(h != h0);
  swapped = page;
  std::swap_ranges(swapped.begin(), swapped.begin() + 64, swapped.begin() + 64 * 40);
  hash(key, swapped.data(), 1, &h);
  CHECK(h != h0);
  // The key matters: another seed gives another hash for the same page.
  const HashKey other = MakeHashKey(43);
  hash(other, page.data(), 1, &h);
  CHECK(h != h0);
}

struct Region {
  uint8_t* base = nullptr;
  size_t bytes = 0;
  explicit Region(size_t b, bool fill = true) : bytes(b) {
    base = static_cast<uint8_t*>(mmap(nullptr, b, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (fill) {
      std::mt19937_64 rng(b);
      for (size_t i = 0; i < b; i += 8) {
        const uint64_t v = rng();
        std::memcpy(base + i, &v, 8);
      }
    }
  }
  ~Region() { munmap(base, bytes); }
  uint64_t addr() const { return reinterpret_cast<uint64_t>(base); }
};

std::set<uint32_t> Bits(const std::vector<uint8_t>& bitmap) {
  std::set<uint32_t> out;
  for (size_t i = 0; i < bitmap.size() * 8; ++i) {
    if (bitmap[i / 8] >> (i % 8) & 1) out.insert(static_cast<uint32_t>(i));
  }
  return out;
}

void TestExactScanOfSelf() {
  Region a(3 << 20), b(1 << 20);  // two segments: page index = a's pages, then b's
  ScannerConfig cfg;
  cfg.pid = getpid();
  cfg.segments = {{a.addr(), a.bytes}, {b.addr(), b.bytes}};
  cfg.chunkBytes = 64 << 10;  // several chunks per segment
  cfg.seed = 5;
  Scanner s(cfg);
  CHECK_EQ(s.pages(), 1024u);
  std::vector<uint8_t> bitmap(s.bitmapBytes(), 0xAA);
  ScanStats base = s.Scan(bitmap.data());
  CHECK(base.baseline);
  CHECK_EQ(base.dirtyPages, 0u);
  CHECK(Bits(bitmap).empty());
  CHECK_EQ(base.pagesRead, 1024u);
  CHECK_EQ(base.bytesRead, 1024u * kPage);

  const std::set<uint32_t> truth = {0, 15, 16, 17, 767, 768, 1000, 1023};
  for (uint32_t p : truth) {
    uint8_t* page = p < 768 ? a.base + p * kPage : b.base + (p - 768) * kPage;
    page[p % kPage] ^= 1;
  }
  // Same bytes written again: not a content change.
  std::memcpy(a.base + 100 * kPage, std::vector<uint8_t>(a.base + 100 * kPage, a.base + 101 * kPage).data(), kPage);
  ScanStats st = s.Scan(bitmap.data());
  CHECK(!st.baseline);
  CHECK(Bits(bitmap) == truth);
  CHECK_EQ(st.dirtyPages, truth.size());
  CHECK_EQ(st.pagesCompared, 1024u);
  CHECK(st.dirtyEstimate == static_cast<double>(truth.size()));
  // Nothing changed since: an empty bitmap (the previous hashes were updated).
  st = s.Scan(bitmap.data());
  CHECK(Bits(bitmap).empty());
  CHECK_EQ(st.dirtyPages, 0u);
  // Change and change back between scans is invisible (content-change semantics).
  a.base[5] ^= 0xff;
  a.base[5] ^= 0xff;
  st = s.Scan(nullptr);
  CHECK_EQ(st.dirtyPages, 0u);
}

void TestAbsentPagesAreNotFaultedIn() {
  const size_t pages = 256;
  Region r(pages * kPage, /*fill=*/false);
  for (size_t p = 0; p < pages; p += 2) r.base[p * kPage] = 1;  // even pages present
  ScannerConfig cfg;
  cfg.pid = getpid();
  cfg.segments = {{r.addr(), r.bytes}};
  cfg.skipAbsent = true;
  cfg.seed = 9;
  // The constructor probes one byte of each segment: page 0 is present already.
  Scanner s(cfg);
  ScanStats base = s.Scan(nullptr);
  CHECK_EQ(base.pagesRead, pages / 2);
  CHECK_EQ(base.pagesAbsent, pages / 2);
  std::vector<unsigned char> vec(pages);
  CHECK(mincore(r.base, r.bytes, vec.data()) == 0);
  size_t resident = 0;
  for (unsigned char v : vec) resident += v & 1;
  CHECK_EQ(resident, pages / 2);
  // An odd page appearing with data is a change; one appearing as zeros (a read fault) is not.
  r.base[1 * kPage + 7] = 3;
  volatile uint8_t sink = r.base[3 * kPage];
  (void)sink;
  std::vector<uint8_t> bitmap(s.bitmapBytes());
  ScanStats st = s.Scan(bitmap.data());
  CHECK(Bits(bitmap) == std::set<uint32_t>{1});
  CHECK_EQ(st.dirtyPages, 1u);
}

void TestSampledAgreesWithExact() {
  Region r(8 << 20);  // 2048 pages
  std::mt19937_64 rng(3);
  ScannerConfig exactCfg;
  exactCfg.pid = getpid();
  exactCfg.segments = {{r.addr(), r.bytes}};
  exactCfg.seed = 77;
  ScannerConfig full = exactCfg;
  full.sampled = true;
  full.sampleFraction = 1.0;
  ScannerConfig quarter = exactCfg;
  quarter.sampled = true;
  quarter.sampleFraction = 0.25;
  quarter.strataPages = 128;
  quarter.resampleEvery = 2;
  Scanner exact(exactCfg), sampledFull(full), sampledQuarter(quarter);
  std::vector<uint8_t> be(exact.bitmapBytes()), bf(be.size()), bq(be.size());
  exact.Scan(nullptr);
  sampledFull.Scan(nullptr);
  sampledQuarter.Scan(nullptr);
  for (int round = 0; round < 6; ++round) {
    std::set<uint32_t> truth;
    while (truth.size() < 300) truth.insert(static_cast<uint32_t>(rng() % 2048));
    for (uint32_t p : truth) r.base[p * kPage + (rng() % kPage)] += 1;
    exact.Scan(be.data());
    ScanStats sf = sampledFull.Scan(bf.data());
    ScanStats sq = sampledQuarter.Scan(bq.data());
    CHECK(Bits(be) == truth);
    CHECK(Bits(bf) == truth);  // f = 1 is exact
    CHECK(sf.dirtyEstimate == static_cast<double>(truth.size()));
    const std::set<uint32_t> got = Bits(bq);
    CHECK(std::includes(truth.begin(), truth.end(), got.begin(), got.end()));  // no false positives
    CHECK_EQ(sq.pagesCompared, 512u);  // 16 strata x 32 pages
    CHECK(sq.dirtyEstimate == 4.0 * static_cast<double>(got.size()));  // N_h / n_h = 4 everywhere
    // A redraw scan (even rounds here) reads the union of two samples, at most 2 x 512 pages.
    CHECK(sq.pagesRead >= 512u && sq.pagesRead <= 1024u);
  }
}

void TestOpenErrors() {
  try {
    ScannerConfig cfg;
    cfg.pid = 4194304 - 1;  // above any pid in use here
    cfg.segments = {{0x10000, kPage}};
    Scanner s(cfg);
    CHECK(false);
  } catch (const dpa::SysError& e) {
    CHECK_EQ(e.err, ESRCH);
    CHECK(e.syscall == "pidfd_open");
  }
  // An address that is not mapped: EFAULT from the probe.
  void* hole = mmap(nullptr, kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  munmap(hole, kPage);
  try {
    ScannerConfig cfg;
    cfg.pid = getpid();
    cfg.segments = {{reinterpret_cast<uint64_t>(hole), kPage}};
    Scanner s(cfg);
    CHECK(false);
  } catch (const dpa::SysError& e) {
    CHECK_EQ(e.err, EFAULT);
    CHECK(e.syscall == "process_vm_readv");
  }
}

struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<LoopEvent> events;
  bool exited = false;
  bool WaitFor(LoopEvent::Kind kind, size_t count, int timeoutMs) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::milliseconds(timeoutMs), [&] {
      return static_cast<size_t>(std::count_if(events.begin(), events.end(), [&](const LoopEvent& e) { return e.kind == kind; })) >= count;
    });
  }
};

void TestLoopManualAndTargetExit() {
  // The child inherits this shared mapping at the same address; it writes to it on command.
  const size_t bytes = 16 << 20;
  auto* shared = static_cast<uint8_t*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  std::memset(shared, 1, bytes);
  int cmd[2], ready[2];
  CHECK(pipe(cmd) == 0);
  CHECK(pipe(ready) == 0);
  const pid_t child = fork();
  if (child == 0) {
    // fork() does not copy page-table entries of shared mappings: the child maps the pages
    // (reads them) so that they are present in *its* page tables, as QEMU's guest RAM is.
    for (size_t off = 0; off < bytes; off += kPage) (void)reinterpret_cast<volatile uint8_t*>(shared)[off];
    char c = 'r';
    if (write(ready[1], &c, 1) != 1) _exit(1);
    while (read(cmd[0], &c, 1) == 1) {
      if (c == 'x') _exit(0);
    }
    _exit(0);
  }
  close(cmd[0]);
  close(ready[1]);
  char r;
  CHECK(read(ready[0], &r, 1) == 1);
  close(ready[0]);

  ScannerConfig cfg;
  cfg.pid = child;
  cfg.segments = {{reinterpret_cast<uint64_t>(shared), bytes}};
  cfg.chunkBytes = 256 << 10;
  LoopConfig lc;
  lc.manual = true;
  std::vector<uint8_t> b0(bytes / kPage / 8), b1(b0.size());
  Collector col;
  std::atomic<int> exits{0};
  {
    ScanLoop loop(
        std::make_unique<Scanner>(cfg), lc, {b0.data(), b1.data()},
        [&](std::unique_ptr<LoopEvent>& ev) {
          std::lock_guard<std::mutex> lock(col.mu);
          col.events.push_back(*ev);
          col.cv.notify_all();
          return true;
        },
        [&] { exits++; });
    loop.Start();
    CHECK(col.WaitFor(LoopEvent::Kind::kBaseline, 1, 10000));
    shared[5 * kPage] = 9;  // same memory as the child's page 5
    loop.Trigger();
    CHECK(col.WaitFor(LoopEvent::Kind::kInterval, 1, 10000));
    {
      std::lock_guard<std::mutex> lock(col.mu);
      const LoopEvent& ev = col.events.back();
      CHECK(ev.kind == LoopEvent::Kind::kInterval);
      CHECK_EQ(ev.seq, 0u);
      CHECK_EQ(ev.stats.dirtyPages, 1u);
      CHECK(ev.buffer >= 0);
      if (ev.buffer >= 0) {
        const std::vector<uint8_t>& bm = ev.buffer == 0 ? b0 : b1;
        CHECK(Bits(bm) == std::set<uint32_t>{5});
      }
      CHECK(ev.tEndMs >= ev.tStartMs);
      loop.Delivered(ev);
    }
    CHECK(write(cmd[1], "x", 1) == 1);  // the child exits: the loop ends on its own
    CHECK(col.WaitFor(LoopEvent::Kind::kEnd, 1, 10000));
    {
      std::lock_guard<std::mutex> lock(col.mu);
      CHECK_EQ(col.events.back().err, ESRCH);
    }
    loop.Stop();
    loop.Stop();  // idempotent
    CHECK_EQ(exits.load(), 1);
  }
  close(cmd[1]);
  waitpid(child, nullptr, 0);
  munmap(shared, bytes);
}

void TestLoopPeriodicLate() {
  // A 1 ms period with scans of 32 MiB: every scan overruns; ticks are skipped, not queued.
  Region r(32 << 20);
  ScannerConfig cfg;
  cfg.pid = getpid();
  cfg.segments = {{r.addr(), r.bytes}};
  LoopConfig lc;
  lc.intervalMs = 1;
  Collector col;
  {
    ScanLoop loop(
        std::make_unique<Scanner>(cfg), lc, {},
        [&](std::unique_ptr<LoopEvent>& ev) {
          std::lock_guard<std::mutex> lock(col.mu);
          col.events.push_back(*ev);
          col.cv.notify_all();
          return true;
        },
        [] {});
    loop.Start();
    CHECK(col.WaitFor(LoopEvent::Kind::kInterval, 3, 20000));
    loop.Stop();
  }
  std::lock_guard<std::mutex> lock(col.mu);
  uint64_t seq = 0;
  for (const LoopEvent& ev : col.events) {
    if (ev.kind != LoopEvent::Kind::kInterval) continue;
    CHECK_EQ(ev.seq, seq++);
    CHECK_EQ(ev.buffer, -1);  // empty pool: measured, posted without bitmap
    if (ev.stats.wallNs > 2000000) {  // scan longer than 2 periods
      CHECK(ev.late);
      CHECK(ev.skippedTicks >= 1);
    }
  }
}

}  // namespace

int main() {
  TestHashPathsAgree();
  TestHashNoticesSmallChanges();
  TestExactScanOfSelf();
  TestAbsentPagesAreNotFaultedIn();
  TestSampledAgreesWithExact();
  TestOpenErrors();
  TestLoopManualAndTargetExit();
  TestLoopPeriodicLate();
  TEST_MAIN_END();
}
