// The calibration VM's core, without Node: workload generators, guest layout, a real KVM VM run
// by hand (one interval at a time) and by the Calibrator threads, in both harvest modes.
// Needs /dev/kvm; without it the KVM part is skipped with a message, unless DPA_REQUIRE_ALL=1.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/errors.h"
#include "kvm/calibrator.h"
#include "kvm/guest_image.h"
#include "kvm/kvm_vm.h"
#include "kvm/workload.h"
#include "test_util.h"

using namespace dpa::kvm;

namespace {

int CountFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n - 1;  // the DIR's own fd
}

// Mappings that belong to a VM: kvm_run and dirty rings (anon_inode:kvm-vcpu) and any mapping
// exactly as large as a guest RAM or aux region used below. (Counting all lines does not work
// under ASan, whose allocator maps memory as it goes.)
int CountVmMaps() {
  FILE* f = std::fopen("/proc/self/maps", "r");
  char line[512];
  int n = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    std::sscanf(line, "%lx-%lx", &lo, &hi);
    const unsigned long bytes = hi - lo;
    n += std::strstr(line, "anon_inode:kvm") != nullptr || bytes == (64ul << 20) || bytes == (128ul << 20) ||
         bytes == PlanAux(128ull << 20, 2).bytes;
  }
  std::fclose(f);
  return n;
}

void TestWorkload() {
  // Determinism and pattern shapes, on a 64 MiB address space (16384 pages).
  const uint64_t pages = 16384;
  WorkloadConfig wc;
  wc.hot_pages = 1000;
  wc.seed = 42;
  wc.rate_pages_per_sec = 150;
  {
    Workload a(wc, pages, 2), b(wc, pages, 2);
    // Carry: 150/s at 100 Hz alternates 1, 2, 1, 2 (1.5 per interval).
    uint64_t sum = 0;
    for (int i = 0; i < 100; ++i) sum += a.NextIntervalWrites(0.01);
    CHECK_EQ(sum, 150u);
    std::set<uint64_t> hot;
    for (uint64_t i = 0; i < wc.hot_pages; ++i) hot.insert(a.HotPage(i));
    CHECK_EQ(hot.size(), size_t(wc.hot_pages));  // the affine map is a bijection
    CHECK(*hot.rbegin() < pages);
    std::vector<Share> sa, sb;
    a.Plan(5000, &sa);
    b.Plan(5000, &sb);
    CHECK_EQ(sa[0].count + sa[1].count, 5000u);
    std::vector<uint64_t> la(sa[1].count), lb(sb[1].count);
    a.Fill(1, sa[1], la.data());
    b.Fill(1, sb[1], lb.data());
    CHECK(la == lb);  // same seed, same pages
    for (uint64_t g : la) CHECK(hot.count(g / kPageBytes) == 1);
  }
  {
    WorkloadConfig seq = wc;
    seq.pattern = Pattern::kSequential;
    Workload w(seq, pages, 3);
    std::vector<Share> s;
    w.Plan(900, &s);
    std::vector<uint64_t> l(s[2].count);
    w.Fill(2, s[2], l.data());
    CHECK_EQ(s[2].cursor, 600u);
    for (size_t j = 1; j < l.size(); ++j) CHECK_EQ((l[j] / kPageBytes + pages - l[j - 1] / kPageBytes) % pages, 1u);
    w.Plan(900, &s);  // the next interval starts where the previous one stopped, wrapping at 1000
    CHECK_EQ(s[0].cursor, 900u);
    CHECK_EQ(s[1].cursor, 200u);
  }
  {
    // Zipf(s=1, n=1000): P(rank 1) = 1/H_1000 = 0.13360, P(rank 2) = half of that.
    ZipfSampler z(1000, 1.0);
    Xoshiro256 rng(7);
    const int n = 400000;
    int r1 = 0, r2 = 0, over = 0;
    for (int i = 0; i < n; ++i) {
      uint64_t k = z.Sample(rng);
      r1 += k == 1;
      r2 += k == 2;
      over += k < 1 || k > 1000;
    }
    CHECK_EQ(over, 0);
    CHECK(std::fabs(r1 / double(n) - 0.13360) < 0.004);
    CHECK(std::fabs(r2 / double(n) - 0.06680) < 0.003);
    ZipfSampler steep(1000, 3.0);  // P(1) = 1/zeta(3) ~ 0.8319
    int s1 = 0;
    for (int i = 0; i < n; ++i) s1 += steep.Sample(rng) == 1;
    CHECK(std::fabs(s1 / double(n) - 0.8319) < 0.005);
  }
}

void TestLayout() {
  AuxLayout l = PlanAux(16ull << 30, 8);
  CHECK_EQ(l.base_gpa, 16ull << 30);
  CHECK_EQ(l.bytes % kHugePageBytes, 0u);
  CHECK(l.MappedEnd() >= l.base_gpa + l.bytes);
  CHECK(l.MailboxOffset(7) + kMailboxEntries * 8 <= l.bytes);
  AuxLayout odd = PlanAux(65ull << 20, 1);  // 65 MiB: aux starts at the next 2 MiB boundary
  CHECK_EQ(odd.base_gpa, 66ull << 20);
}

struct CollectSink : IntervalSink {
  std::mutex mu;
  std::vector<IntervalReport> reports;
  EndReport end;
  bool ended = false;
  bool Deliver(const IntervalReport& r) override {
    std::lock_guard<std::mutex> lock(mu);
    reports.push_back(r);
    return true;
  }
  void End(const EndReport& e) override {
    std::lock_guard<std::mutex> lock(mu);
    end = e;
    ended = true;
  }
};

struct OneSlotPool : BitmapPool {
  std::vector<uint8_t> buf;
  bool busy = false;
  int Acquire() override {
    if (busy) return -1;
    busy = true;
    return 0;
  }
  uint8_t* Data(int) override { return buf.data(); }
  void Release(int) override { busy = false; }
  bool Empty() const override { return false; }
};

// One interval driven by hand: the pages asked for are exactly the pages reported.
void TestManualInterval(HarvestMode mode) {
  VmConfig vc;
  vc.guest_mib = 64;
  vc.vcpus = 1;
  vc.mode = mode;
  KvmVm vm(vc);
  const uint64_t pages[] = {0, 1, 63, 64, 4095, 16383, 1000, 1000};  // includes a duplicate
  uint64_t* box = vm.mailbox(0);
  for (size_t i = 0; i < 8; ++i) box[i] = pages[i] * kPageBytes;
  std::vector<uint64_t> spill;
  CHECK_EQ(vm.RunVcpu(0, 8, 0x1234, &spill).ring_full_exits, 0u);
  for (uint64_t p : pages) {
    uint64_t v;
    std::memcpy(&v, vm.ram() + p * kPageBytes, 8);
    CHECK_EQ(v, 0x1234u);  // the guest really ran and stored the value
  }
  std::vector<uint64_t> bitmap(vm.bitmap_words(), 0);
  if (mode == HarvestMode::kBitmap) {
    vm.HarvestBitmap(bitmap.data());
  } else {
    std::vector<uint64_t> got;
    CHECK_EQ(vm.CollectRing(0, &got), 0u);
    vm.ResetRings();
    for (uint64_t p : got) bitmap[p / 64] |= 1ull << (p % 64);
  }
  uint64_t set = 0;
  for (uint64_t w : bitmap) set += __builtin_popcountll(w);
  CHECK_EQ(set, 7u);
  for (uint64_t p : pages) CHECK(bitmap[p / 64] >> (p % 64) & 1);

  // Nothing written since the clear/reset: the next harvest is empty; one new write shows alone.
  vm.RunVcpu(0, 0, 1, &spill);
  box[0] = 77 * kPageBytes;
  vm.RunVcpu(0, 1, 2, &spill);
  std::fill(bitmap.begin(), bitmap.end(), 0);
  if (mode == HarvestMode::kBitmap) {
    vm.HarvestBitmap(bitmap.data());
  } else {
    std::vector<uint64_t> got;
    vm.CollectRing(0, &got);
    vm.ResetRings();
    for (uint64_t p : got) bitmap[p / 64] |= 1ull << (p % 64);
  }
  set = 0;
  for (uint64_t w : bitmap) set += __builtin_popcountll(w);
  CHECK_EQ(set, 1u);
  CHECK(bitmap[1] >> 13 & 1);

  // Syscall failures surface as SysError with errno and syscall name.
  if (mode == HarvestMode::kRing) {
    try {
      vm.GetDirtyLog(bitmap.data());
      CHECK(false);
    } catch (const dpa::SysError& e) {
      CHECK_EQ(e.err, ENXIO);  // KVM refuses the bitmap interface once dirty rings are on
      CHECK(e.syscall == "ioctl(KVM_GET_DIRTY_LOG)");
    }
  }
  vm.Close();
  vm.Close();  // idempotent
  try {
    vm.GetDirtyLog(bitmap.data());
    CHECK(false);
  } catch (const dpa::SysError& e) {
    CHECK_EQ(e.err, EBADF);
  }
}

void TestCalibrator(HarvestMode mode, uint32_t vcpus, Pattern pattern, uint32_t ring_entries, double rate,
                    uint64_t intervals = 20) {
  VmConfig vc;
  vc.guest_mib = 128;
  vc.vcpus = vcpus;
  vc.mode = mode;
  vc.ring_entries = ring_entries;
  KvmVm vm(vc);
  RunConfig rc;
  rc.workload.pattern = pattern;
  rc.workload.rate_pages_per_sec = rate;
  rc.workload.hot_pages = 20000;
  rc.workload.zipf_s = 1.1;
  rc.workload.seed = 3;
  rc.interval_us = 5000;
  rc.max_intervals = intervals;
  CollectSink sink;
  OneSlotPool pool;
  pool.buf.assign(vm.bitmap_words() * 8, 0xff);
  {
    Calibrator cal(&vm, rc, &sink, &pool);
    cal.Start();
    cal.Join();  // a finite run ends on its own
    RunStats s = cal.Stats();
    CHECK_EQ(s.intervals, intervals);
    CHECK_EQ(s.mismatched_intervals, 0u);
    CHECK_EQ(s.foreign_entries, 0u);
    CHECK(s.harvest_thread_cpu_ms > 0);
    CHECK(s.vcpu_cpu_ms > 0);
  }
  CHECK(sink.ended);
  if (sink.end.code != "COMPLETE") std::fprintf(stderr, "run ended with %s: %s\n", sink.end.code.c_str(), sink.end.message.c_str());
  CHECK(sink.end.code == "COMPLETE");
  if (sink.reports.empty()) return;
  CHECK_EQ(sink.reports.size(), size_t(intervals));
  uint64_t writes = 0, ring_full = 0;
  for (size_t i = 0; i < sink.reports.size(); ++i) {
    const IntervalReport& r = sink.reports[i];
    CHECK_EQ(r.seq, uint64_t(i));
    CHECK_EQ(r.missing_pages + r.extra_pages, 0u);
    CHECK_EQ(r.truth_pages, r.measured_pages);
    CHECK(r.truth_pages > 0 && r.truth_pages <= r.writes_requested);
    if (pattern == Pattern::kSequential) CHECK_EQ(r.truth_pages, r.writes_requested);  // no repeats below the hot set
    CHECK(r.t_end_ms >= r.t_start_ms);
    writes += r.writes_requested;
    ring_full += r.ring_full_exits + r.early_harvests;
  }
  CHECK_EQ(writes, uint64_t(rate * 0.005 * intervals + 0.5));
  // More pages per vCPU than half the ring holds: the ring was harvested mid-interval.
  if (mode == HarvestMode::kRing && rate * 0.005 / vcpus > ring_entries / 2) CHECK(ring_full > 0);
  // The pool slot held the last delivered interval's bitmap (slot never released: sink kept it).
  uint64_t bits = 0;
  for (uint8_t b : pool.buf) bits += __builtin_popcount(b);
  CHECK_EQ(bits, sink.reports[0].measured_pages);
}

}  // namespace

int main() {
  TestWorkload();
  TestLayout();

  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    const char* require = std::getenv("DPA_REQUIRE_ALL");
    if (require && std::strcmp(require, "1") == 0) {
      std::fprintf(stderr, "kvm_test: /dev/kvm is not usable and DPA_REQUIRE_ALL=1: failing\n");
      return 1;
    }
    std::fprintf(stderr, "kvm_test: SKIPPING the KVM part: /dev/kvm is not usable (%s)\n", std::strerror(errno));
    TEST_MAIN_END();
  }

  KvmCapabilities caps = ProbeCapabilities();
  CHECK(caps.manual_dirty_log_protect2);
  CHECK(caps.dirty_ring_max_bytes >= 4096 * 16);
  CHECK(caps.phys_bits >= 36);

  const int fds0 = CountFds(), maps0 = CountVmMaps();
  TestManualInterval(HarvestMode::kBitmap);
  TestManualInterval(HarvestMode::kRing);
  TestCalibrator(HarvestMode::kBitmap, 2, Pattern::kUniform, 4096, 200000);
  TestCalibrator(HarvestMode::kBitmap, 1, Pattern::kSequential, 4096, 200000);
  TestCalibrator(HarvestMode::kRing, 2, Pattern::kZipf, 4096, 200000);
  // 6000 pages per interval against a 1024-entry ring: mid-interval harvests keep it exact.
  TestCalibrator(HarvestMode::kRing, 1, Pattern::kSequential, 1024, 1200000, 3);
  CHECK_EQ(CountFds(), fds0);    // every vCPU, VM, /dev/kvm, timerfd and eventfd closed
  CHECK_EQ(CountVmMaps(), maps0);  // RAM, aux, kvm_run and ring mappings gone

  {
    // KVM fds are close-on-exec.
    VmConfig vc;
    vc.guest_mib = 64;
    KvmVm vm(vc);
    int flagged = 0, total = 0;
    for (int fd = 3; fd < 1024; ++fd) {
      char path[64], target[256];
      std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
      ssize_t n = readlink(path, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      if (std::strcmp(target, "/dev/kvm") != 0 && std::strncmp(target, "anon_inode:kvm", 14) != 0) continue;
      ++total;
      flagged += (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
    }
    CHECK_EQ(total, 3);  // /dev/kvm, kvm-vm, kvm-vcpu:0
    CHECK_EQ(flagged, total);
  }
  {
    // A ring size KVM cannot take is refused before any syscall.
    VmConfig vc;
    vc.mode = HarvestMode::kRing;
    vc.ring_entries = 1000;
    bool threw = false;
    try {
      KvmVm vm(vc);
    } catch (const std::out_of_range&) {
      threw = true;
    }
    CHECK(threw);
  }
  TEST_MAIN_END();
}
