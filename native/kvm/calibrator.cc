#include "kvm/calibrator.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <system_error>

#include "common/errors.h"

namespace dpa::kvm {
namespace {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t ThreadCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline int Popcount(uint64_t w) { return __builtin_popcountll(w); }

}  // namespace

Calibrator::Calibrator(KvmVm* vm, const RunConfig& config, IntervalSink* sink, BitmapPool* pool)
    : vm_(vm),
      config_(config),
      sink_(sink),
      pool_(pool),
      workload_(config.workload, vm->guest_pages(), vm->config().vcpus),
      vcpus_(vm->config().vcpus),
      words_(vm->bitmap_words()) {
  if (config.interval_us < 1000 || config.interval_us > 1000000) throw std::out_of_range("intervalMs must be 1..1000");
  // The guest cannot execute more than its mailboxes hold in one interval.
  const double per_interval = config.workload.rate_pages_per_sec * config.interval_us / 1e6;
  if (per_interval > double(kMailboxEntries) * vcpus_)
    throw std::out_of_range("ratePagesPerSec x intervalMs exceeds " + std::to_string(kMailboxEntries) + " page writes per vCPU per interval");
  vcpu_errors_.resize(vcpus_);
  vcpu_outcomes_.resize(vcpus_);
  spill_.resize(vcpus_);
  vcpu_cpu_ns_.reset(new std::atomic<int64_t>[vcpus_]);
  for (uint32_t i = 0; i < vcpus_; ++i) vcpu_cpu_ns_[i] = 0;
  measured_.assign(words_, 0);
  truth_.assign(words_, 0);
}

Calibrator::~Calibrator() { Stop(); }

void Calibrator::Start() {
  if (started_) throw std::invalid_argument("the calibration run was already started");
  if (vm_->closed()) ThrowSys("ioctl(KVM_RUN)", EBADF, "the VM is closed");
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  if (timer_fd_ < 0) ThrowSys("timerfd_create");
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) {
    int err = errno;
    ::close(timer_fd_);
    timer_fd_ = -1;
    ThrowSys("eventfd", err);
  }
  // Threads inherit the creator's signal mask: block everything so that Node's signal handling
  // stays on the main thread and KVM_RUN is never cut short by a signal.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    for (uint32_t i = 0; i < vcpus_; ++i) vcpu_threads_.emplace_back(&Calibrator::VcpuLoop, this, i);
    harvest_thread_ = std::thread(&Calibrator::HarvestLoop, this);
  } catch (const std::system_error& e) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    StopVcpus();
    ::close(timer_fd_);
    ::close(stop_fd_);
    timer_fd_ = stop_fd_ = -1;
    ThrowSys("pthread_create", e.code().value(), "calibration threads");
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  started_ = true;
}

void Calibrator::Stop() {
  if (!started_) return;
  stop_.store(true);
  const uint64_t one = 1;
  if (stop_fd_ >= 0) (void)!::write(stop_fd_, &one, sizeof one);
  Join();
}

void Calibrator::Join() {
  if (harvest_thread_.joinable()) harvest_thread_.join();
  if (timer_fd_ >= 0) ::close(timer_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  timer_fd_ = stop_fd_ = -1;
}

RunStats Calibrator::Stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  RunStats s = stats_;
  int64_t vcpu_ns = 0;
  for (uint32_t i = 0; i < vcpus_; ++i) vcpu_ns += vcpu_cpu_ns_[i].load(std::memory_order_relaxed);
  s.vcpu_cpu_ms = vcpu_ns / 1e6;
  return s;
}

void Calibrator::StopVcpus() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    vcpu_stop_ = true;
  }
  go_cv_.notify_all();
  for (auto& t : vcpu_threads_)
    if (t.joinable()) t.join();
}

void Calibrator::VcpuLoop(uint32_t vcpu) {
  uint64_t seen = 0;
  for (;;) {
    Share share;
    uint64_t value;
    {
      std::unique_lock<std::mutex> lock(mu_);
      go_cv_.wait(lock, [&] { return vcpu_stop_ || generation_ != seen; });
      if (vcpu_stop_) return;
      seen = generation_;
      share = shares_[vcpu];
      value = value_;
    }
    KvmVm::RunOutcome outcome;
    std::exception_ptr error;
    try {
      // The vCPU thread plays the guest's "mind": it picks its pages (own generator, own
      // mailbox), then the guest code writes them.
      workload_.Fill(vcpu, share, vm_->mailbox(vcpu));
      outcome = vm_->RunVcpu(vcpu, share.count, value, &spill_[vcpu]);
    } catch (...) {
      error = std::current_exception();
    }
    vcpu_cpu_ns_[vcpu].store(ThreadCpuNs(), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      vcpu_outcomes_[vcpu] = outcome;
      vcpu_errors_[vcpu] = error;
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }
}

bool Calibrator::WaitUntil(int64_t deadline_ns) {
  itimerspec its{};
  its.it_value.tv_sec = deadline_ns / 1000000000;
  its.it_value.tv_nsec = deadline_ns % 1000000000;
  if (timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &its, nullptr) < 0) ThrowSys("timerfd_settime");
  pollfd fds[2] = {{timer_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  for (;;) {
    if (stop_.load()) return false;
    int r = ::poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      ThrowSys("poll");
    }
    if (fds[1].revents) return false;
    if (fds[0].revents) {
      uint64_t expirations;
      (void)!::read(timer_fd_, &expirations, sizeof expirations);
      return true;
    }
  }
}

void Calibrator::SetBit(std::vector<uint64_t>* bitmap, std::vector<uint32_t>* touched, uint64_t page) {
  uint64_t& w = (*bitmap)[page >> 6];
  if (w == 0) touched->push_back(uint32_t(page >> 6));
  w |= 1ull << (page & 63);
}

void Calibrator::HarvestInto() {
  if (vm_->config().mode == HarvestMode::kBitmap) {
    vm_->HarvestBitmap(measured_.data());
    return;
  }
  for (uint32_t w : measured_touched_) measured_[w] = 0;
  measured_touched_.clear();
  ring_pages_.clear();
  for (uint32_t i = 0; i < vcpus_; ++i) {
    foreign_ += vm_->CollectRing(i, &ring_pages_);
    ring_pages_.insert(ring_pages_.end(), spill_[i].begin(), spill_[i].end());
    spill_[i].clear();
  }
  if (!ring_pages_.empty()) vm_->ResetRings();
  for (uint64_t page : ring_pages_) SetBit(&measured_, &measured_touched_, page);
}

void Calibrator::CompareWithTruth(IntervalReport* r) {
  for (uint32_t w : truth_touched_) truth_[w] = 0;
  truth_touched_.clear();
  for (uint32_t i = 0; i < vcpus_; ++i) {
    const uint64_t* list = vm_->mailbox(i);
    for (uint64_t j = 0; j < shares_[i].count; ++j) SetBit(&truth_, &truth_touched_, list[j] / kPageBytes);
  }
  uint64_t truth = 0, measured = 0, missing = 0, extra = 0;
  int64_t where = -1;
  auto visit = [&](uint64_t w) {
    const uint64_t t = truth_[w], m = measured_[w];
    truth += Popcount(t);
    measured += Popcount(m);
    const uint64_t miss = t & ~m, more = m & ~t;
    if ((miss | more) != 0) {
      missing += Popcount(miss);
      extra += Popcount(more);
      if (where < 0) where = int64_t(w * 64 + __builtin_ctzll(miss | more));
    }
  };
  if (vm_->config().mode == HarvestMode::kBitmap) {
    // The kernel wrote the whole bitmap: every word can hold a surprise.
    for (uint64_t w = 0; w < words_; ++w) visit(w);
  } else {
    // Both bitmaps are zero outside their touched words: visit each word once.
    for (uint32_t w : truth_touched_) visit(w);
    for (uint32_t w : measured_touched_)
      if (truth_[w] == 0) visit(w);
  }
  r->truth_pages = truth;
  r->measured_pages = measured;
  r->missing_pages = missing;
  r->extra_pages = extra;
  r->mismatch_page = where;
}

void Calibrator::RunIntervals() {
  const int64_t interval_ns = int64_t(config_.interval_us) * 1000;
  const double interval_sec = config_.interval_us / 1e6;
  const int64_t cpu0 = ThreadCpuNs();
  int64_t t_start = NowNs();
  int64_t deadline = t_start + interval_ns;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.first_start_ms = t_start / 1e6;
  }
  for (uint64_t seq = 0; config_.max_intervals == 0 || seq < config_.max_intervals; ++seq) {
    if (stop_.load()) return;
    IntervalReport r;
    r.seq = seq;
    r.writes_requested = workload_.NextIntervalWrites(interval_sec);
    {
      std::lock_guard<std::mutex> lock(mu_);
      workload_.Plan(r.writes_requested, &shares_);
      value_ = seq + 1;  // what the guest stores: 0 in RAM means "never written"
      pending_ = vcpus_;
      ++generation_;
    }
    go_cv_.notify_all();
    {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [&] { return pending_ == 0; });
      for (uint32_t i = 0; i < vcpus_; ++i) {
        if (vcpu_errors_[i]) std::rethrow_exception(vcpu_errors_[i]);
        r.ring_full_exits += vcpu_outcomes_[i].ring_full_exits;
        r.early_harvests += vcpu_outcomes_[i].early_harvests;
      }
    }
    const int64_t guest_done = NowNs();
    r.guest_run_us = (guest_done - t_start) / 1e3;
    r.late = guest_done > deadline;
    if (!r.late && !WaitUntil(deadline)) return;
    const int64_t t_end = NowNs();
    HarvestInto();
    const int64_t harvested = NowNs();
    CompareWithTruth(&r);
    const int64_t compared = NowNs();
    r.t_start_ms = t_start / 1e6;
    r.t_end_ms = t_end / 1e6;
    r.harvest_us = (harvested - t_end) / 1e3;
    r.compare_us = (compared - harvested) / 1e3;

    if (pool_ && !pool_->Empty()) {
      r.bitmap_slot = pool_->Acquire();
      r.bitmap_dropped = r.bitmap_slot < 0;
      if (r.bitmap_slot >= 0) {
        uint8_t* out = pool_->Data(r.bitmap_slot);
        if (vm_->config().mode == HarvestMode::kBitmap) {
          std::memcpy(out, measured_.data(), words_ * 8);
        } else {
          std::memset(out, 0, words_ * 8);
          for (uint32_t w : measured_touched_) std::memcpy(out + uint64_t(w) * 8, &measured_[w], 8);
        }
      }
    }
    const bool mismatch = r.missing_pages + r.extra_pages != 0;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      RunStats& s = stats_;
      ++s.intervals;
      s.late_intervals += r.late;
      s.mismatched_intervals += mismatch;
      s.mismatched_pages += r.missing_pages + r.extra_pages;
      s.writes += r.writes_requested;
      s.truth_pages += r.truth_pages;
      s.measured_pages += r.measured_pages;
      s.ring_full_exits += r.ring_full_exits;
      s.early_harvests += r.early_harvests;
      s.foreign_entries = foreign_;
      s.harvest_us_total += r.harvest_us;
      s.harvest_us_max = std::max(s.harvest_us_max, r.harvest_us);
      s.compare_us_total += r.compare_us;
      s.guest_run_us_total += r.guest_run_us;
      s.bitmap_dropped += r.bitmap_dropped;
      s.last_end_ms = r.t_end_ms;
      s.harvest_thread_cpu_ms = (ThreadCpuNs() - cpu0) / 1e6;
    }
    if (!sink_->Deliver(r)) {
      if (r.bitmap_slot >= 0) pool_->Release(r.bitmap_slot);
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.dropped_intervals;
    }
    // Stay on the grid t0 + k·interval; ticks that already passed are skipped, not bunched.
    deadline += interval_ns;
    const int64_t now = NowNs();
    while (deadline <= now) {
      deadline += interval_ns;
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.skipped_ticks;
    }
    t_start = now;
  }
}

void Calibrator::HarvestLoop() {
  EndReport end;
  end.code = "COMPLETE";
  try {
    RunIntervals();
    if (stop_.load()) end.code = "STOPPED";
  } catch (const SysError& e) {
    end.code = ErrnoCode(e.err);
    end.err = e.err;
    end.syscall = e.syscall;
    end.message = e.what();
  } catch (const GuestError& e) {
    end.code = "EGUEST";
    end.message = e.what();
  } catch (const RingOverflowError& e) {
    end.code = "EOVERFLOW";
    end.message = e.what();
  } catch (const std::exception& e) {
    end.code = "EINTERNAL";
    end.message = e.what();
  }
  StopVcpus();
  end.stats = Stats();
  if (end.message.empty()) end.message = end.code == "COMPLETE" ? "calibration run complete" : "calibration run stopped";
  sink_->End(end);
}

}  // namespace dpa::kvm
