// The dedicated scan thread: one baseline scan, then one scan per tick (or per trigger in manual
// mode), each result posted through a callback. No Node headers; the Node-API glue posts the
// events to JS through a thread-safe function, the native unit test collects them directly.
//
// Timing: ticks sit on a grid t0 + k * interval (t0 = start of the baseline scan). A scan that
// ends after the next tick is "late"; the ticks it overran are skipped (counted in skippedTicks)
// so scans never pile up and CPU use stays bounded by scan time / interval.
// Waiting is a poll() on an eventfd (trigger, stop) and the target's pidfd, so close() and the
// target's exit are noticed at once, also between scans.
// Bitmaps: the caller gives a pool of buffers. The thread takes a free one per interval and
// hands it out with the event; it comes back through Delivered() once the listener returned.
// With no free buffer the interval is still measured and posted, without a bitmap.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/scanner.h"

namespace dpa {
namespace guestmem {

struct LoopEvent {
  enum class Kind { kBaseline, kInterval, kEnd } kind = Kind::kInterval;
  uint64_t seq = 0;        // intervals only: 0, 1, 2, ...; a gap = intervals dropped
  double tStartMs = 0;     // CLOCK_MONOTONIC, milliseconds
  double tEndMs = 0;
  ScanStats stats;
  bool late = false;
  double lateMs = 0;       // how far past the next tick the scan ended
  uint32_t skippedTicks = 0;
  int buffer = -1;         // pool index holding the bitmap, -1 = no bitmap
  // kEnd only
  int err = 0;
  std::string syscall;
  std::string message;
  bool duringScan = false;
};

struct LoopConfig {
  uint32_t intervalMs = 100;
  bool manual = false;      // scan only on Trigger()
  uint32_t maxInFlight = 8; // intervals posted but not yet Delivered(); beyond it they are dropped
};

class ScanLoop {
 public:
  // Returns false when the event could not be queued (it is then dropped by the loop).
  using PostFn = std::function<bool(std::unique_ptr<LoopEvent>&)>;
  // Called on the scan thread just before it exits (after the end event, if any).
  using ExitFn = std::function<void()>;

  ScanLoop(std::unique_ptr<Scanner> scanner, LoopConfig config, std::vector<uint8_t*> pool, PostFn post,
           ExitFn onExit);
  ~ScanLoop();
  ScanLoop(const ScanLoop&) = delete;
  ScanLoop& operator=(const ScanLoop&) = delete;

  void Start();
  // Requests a scan now (coalesced while one is running).
  void Trigger();
  // Stops and joins the thread; idempotent. No end event is posted for a requested stop.
  void Stop();
  // Main thread, after the listener for an event returned: frees its buffer and in-flight slot.
  void Delivered(const LoopEvent& event);
  // Once stopped: frees the scanner (pidfd, pagemap fd, hash table) and closes the eventfd.
  // Main thread only (like Trigger and Stop).
  void ReleaseResources();
  const Scanner* scanner() const { return scanner_.get(); }

 private:
  void Run();
  void PostEnd(int err, const std::string& syscall, const std::string& message, bool duringScan);
  int TakeBuffer();
  void ReturnBuffer(int index);

  std::unique_ptr<Scanner> scanner_;
  LoopConfig cfg_;
  std::vector<uint8_t*> pool_;
  std::vector<uint8_t> scratch_;
  PostFn post_;
  ExitFn onExit_;
  int eventFd_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint32_t> inFlight_{0};
  std::mutex poolMutex_;
  std::vector<int> free_;
};

double MonotonicMs();

}  // namespace guestmem
}  // namespace dpa
