// The calibration run: one thread per vCPU (each does KVM_RUN for its own vCPU) and one harvest
// thread that paces intervals on absolute CLOCK_MONOTONIC deadlines (timerfd). Per interval:
//
//   plan writes ──► vCPU threads fill their mailboxes and run the guest until HLT
//   ──► wait for the deadline ──► harvest (bitmap or ring) ──► truth vs measured, bit by bit
//   ──► report (with a pooled bitmap copy when one is free)
//
// Every vCPU is halted while the harvest runs, so the pages asked for in the interval are
// exactly the pages written in it: any difference is a measurement error, never a race.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvm/kvm_vm.h"
#include "kvm/workload.h"

namespace dpa::kvm {

struct RunConfig {
  WorkloadConfig workload;
  uint32_t interval_us = 10000;  // 1,000..1,000,000
  uint64_t max_intervals = 0;    // 0 = until Stop()
};

struct IntervalReport {
  uint64_t seq = 0;
  double t_start_ms = 0;  // CLOCK_MONOTONIC: guest released for this interval
  double t_end_ms = 0;    // CLOCK_MONOTONIC: harvest began
  uint64_t writes_requested = 0;
  uint64_t truth_pages = 0;     // distinct pages the guest was told to write
  uint64_t measured_pages = 0;  // distinct pages the harvest reported
  uint64_t missing_pages = 0;   // written but not reported
  uint64_t extra_pages = 0;     // reported but not written
  int64_t mismatch_page = -1;   // one differing page (guest page number), for diagnosis
  double harvest_us = 0;        // dirty-log/ring harvest incl. clear/reset
  double guest_run_us = 0;      // from releasing the vCPUs until the last one halted
  double compare_us = 0;        // building the truth bitmap and comparing
  uint32_t ring_full_exits = 0;  // ring mode: KVM_EXIT_DIRTY_RING_FULL harvested mid-interval
  uint32_t early_harvests = 0;   // ring mode: mid-interval harvests between half-ring pieces
  bool late = false;            // the guest finished its writes after the interval's deadline
  int bitmap_slot = -1;         // pool slot holding the measured bitmap, or -1
  bool bitmap_dropped = false;  // a pool exists but no slot was free
};

struct RunStats {
  uint64_t intervals = 0;
  uint64_t dropped_intervals = 0;  // compared but not delivered (sink full)
  uint64_t bitmap_dropped = 0;
  uint64_t late_intervals = 0;
  uint64_t skipped_ticks = 0;
  uint64_t mismatched_intervals = 0;
  uint64_t mismatched_pages = 0;
  uint64_t writes = 0;
  uint64_t truth_pages = 0;
  uint64_t measured_pages = 0;
  uint64_t ring_full_exits = 0;
  uint64_t early_harvests = 0;
  uint64_t foreign_entries = 0;  // ring entries outside slot 0 (never expected)
  double harvest_us_total = 0;
  double harvest_us_max = 0;
  double compare_us_total = 0;
  double guest_run_us_total = 0;
  double first_start_ms = 0;
  double last_end_ms = 0;
  double harvest_thread_cpu_ms = 0;
  double vcpu_cpu_ms = 0;
};

struct EndReport {
  std::string code;  // COMPLETE, STOPPED, EGUEST, an errno name, EINTERNAL
  std::string message;
  int err = 0;
  std::string syscall;
  RunStats stats;
};

// Bitmap buffers owned by the caller and lent to the harvest thread one interval at a time.
class BitmapPool {
 public:
  virtual ~BitmapPool() = default;
  virtual int Acquire() = 0;  // a free slot, now owned by the harvest thread, or -1
  virtual uint8_t* Data(int slot) = 0;
  virtual void Release(int slot) = 0;  // from any thread
  virtual bool Empty() const = 0;
};

class IntervalSink {
 public:
  virtual ~IntervalSink() = default;
  // On the harvest thread; must not block. false = not delivered (the slot is then released).
  virtual bool Deliver(const IntervalReport& report) = 0;
  // Once, last thing on the harvest thread.
  virtual void End(const EndReport& end) = 0;
};

class Calibrator {
 public:
  // vm, sink and pool (may be null) must outlive the calibrator's threads.
  Calibrator(KvmVm* vm, const RunConfig& config, IntervalSink* sink, BitmapPool* pool);
  ~Calibrator();
  Calibrator(const Calibrator&) = delete;
  Calibrator& operator=(const Calibrator&) = delete;

  // Spawns the threads (all signals blocked in them). Throws SysError. Once only.
  void Start();
  // Asks the run to stop and joins every thread; End() has been called when this returns.
  // Idempotent; never from inside the sink.
  void Stop();
  // Joins the harvest thread after it ended on its own (its last act is End()).
  void Join();
  bool started() const { return started_; }
  RunStats Stats() const;

 private:
  void HarvestLoop();
  void RunIntervals();
  void VcpuLoop(uint32_t vcpu);
  void StopVcpus();
  bool WaitUntil(int64_t deadline_ns);  // false when Stop() was requested
  void HarvestInto();
  void CompareWithTruth(IntervalReport* report);
  void SetBit(std::vector<uint64_t>* bitmap, std::vector<uint32_t>* touched, uint64_t page);

  KvmVm* vm_;
  RunConfig config_;
  IntervalSink* sink_;
  BitmapPool* pool_;
  Workload workload_;
  const uint32_t vcpus_;
  const uint64_t words_;

  bool started_ = false;
  std::atomic<bool> stop_{false};
  int timer_fd_ = -1;
  int stop_fd_ = -1;
  std::thread harvest_thread_;
  std::vector<std::thread> vcpu_threads_;

  // Handshake between the harvest thread and the vCPU threads.
  std::mutex mu_;
  std::condition_variable go_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ = 0;
  uint32_t pending_ = 0;
  bool vcpu_stop_ = false;
  uint64_t value_ = 0;
  std::vector<Share> shares_;
  std::vector<std::exception_ptr> vcpu_errors_;
  std::vector<KvmVm::RunOutcome> vcpu_outcomes_;
  std::vector<std::vector<uint64_t>> spill_;  // ring pages harvested mid-interval, per vCPU
  std::unique_ptr<std::atomic<int64_t>[]> vcpu_cpu_ns_;

  // Harvest-thread-only state.
  std::vector<uint64_t> measured_;
  std::vector<uint32_t> measured_touched_;  // ring mode: words to clear before the next interval
  std::vector<uint64_t> truth_;
  std::vector<uint32_t> truth_touched_;
  std::vector<uint64_t> ring_pages_;
  uint64_t foreign_ = 0;

  mutable std::mutex stats_mu_;
  RunStats stats_;
};

}  // namespace dpa::kvm
