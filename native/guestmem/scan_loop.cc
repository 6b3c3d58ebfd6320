#include "guestmem/scan_loop.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>

#include "common/errors.h"

namespace dpa {
namespace guestmem {
namespace {
constexpr int kExitGraceMs = 1000;
}  // namespace

double MonotonicMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // the clock behind uv_hrtime() / process.hrtime()
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

ScanLoop::ScanLoop(std::unique_ptr<Scanner> scanner, LoopConfig config, std::vector<uint8_t*> pool, PostFn post,
                   ExitFn onExit)
    : scanner_(std::move(scanner)), cfg_(config), pool_(std::move(pool)), post_(std::move(post)),
      onExit_(std::move(onExit)) {
  if (cfg_.intervalMs < 1) throw std::out_of_range("intervalMs: must be >= 1");
  if (cfg_.maxInFlight < 1) throw std::out_of_range("maxInFlight: must be >= 1");
  eventFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (eventFd_ < 0) ThrowSys("eventfd", errno);
  for (int i = static_cast<int>(pool_.size()) - 1; i >= 0; --i) free_.push_back(i);
}

ScanLoop::~ScanLoop() {
  Stop();
  if (eventFd_ >= 0) close(eventFd_);
}

void ScanLoop::Start() { thread_ = std::thread([this] { Run(); }); }

void ScanLoop::Trigger() {
  if (eventFd_ < 0) return;
  const uint64_t one = 1;
  // EAGAIN only when the counter is saturated: a trigger is pending anyway.
  (void)!write(eventFd_, &one, sizeof one);
}

void ScanLoop::Stop() {
  stop_.store(true);
  Trigger();
  if (thread_.joinable()) thread_.join();
}

void ScanLoop::ReleaseResources() {
  if (thread_.joinable()) return;
  scanner_.reset();
  if (eventFd_ >= 0) close(eventFd_);
  eventFd_ = -1;
}

int ScanLoop::TakeBuffer() {
  std::lock_guard<std::mutex> lock(poolMutex_);
  if (free_.empty()) return -1;
  const int index = free_.back();
  free_.pop_back();
  return index;
}

void ScanLoop::ReturnBuffer(int index) {
  if (index < 0) return;
  std::lock_guard<std::mutex> lock(poolMutex_);
  free_.push_back(index);
}

void ScanLoop::Delivered(const LoopEvent& event) {
  if (event.kind != LoopEvent::Kind::kInterval) return;
  inFlight_.fetch_sub(1);
  ReturnBuffer(event.buffer);
}

void ScanLoop::PostEnd(int err, const std::string& syscall, const std::string& message, bool duringScan) {
  auto ev = std::make_unique<LoopEvent>();
  ev->kind = LoopEvent::Kind::kEnd;
  ev->err = err;
  ev->syscall = syscall;
  ev->message = message;
  ev->duringScan = duringScan;
  ev->tEndMs = MonotonicMs();
  post_(ev);
}

void ScanLoop::Run() {
  auto endFromError = [this](const SysError& e) {
    // A read that fails because the target is gone (ESRCH, or EFAULT/pagemap EOF while its
    // address space is torn down) ends the source as ESRCH; anything else keeps its errno.
    // A killed process unmaps its memory (EFAULT) before its pidfd reports the exit, so give
    // the exit a moment to become visible before calling it a vanished mapping.
    bool exited = e.err == ESRCH || scanner_->TargetExited();
    if (!exited && (e.err == EFAULT || e.err == EINVAL)) {
      pollfd p{scanner_->pidfd(), POLLIN, 0};
      exited = poll(&p, 1, kExitGraceMs) > 0;
    }
    if (exited) {
      PostEnd(ESRCH, e.syscall, std::string("target process exited during a scan (") + e.what() + ")", true);
    } else {
      PostEnd(e.err, e.syscall, e.what(), true);
    }
  };
  try {
    const double period = cfg_.intervalMs;
    const double t0 = MonotonicMs();
    ScanStats base;
    try {
      base = scanner_->Scan(nullptr, &stop_);
    } catch (const SysError& e) {
      endFromError(e);
      onExit_();
      return;
    }
    if (base.cancelled) {
      onExit_();
      return;
    }
    double prevEnd = MonotonicMs();
    {
      auto ev = std::make_unique<LoopEvent>();
      ev->kind = LoopEvent::Kind::kBaseline;
      ev->tStartMs = t0;
      ev->tEndMs = prevEnd;
      ev->stats = base;
      post_(ev);
    }
    double nextTick = t0 + period;
    if (nextTick <= prevEnd) nextTick += (std::floor((prevEnd - nextTick) / period) + 1) * period;
    uint64_t seq = 0;
    pollfd fds[2] = {{eventFd_, POLLIN, 0}, {scanner_->pidfd(), POLLIN, 0}};
    for (;;) {
      bool triggered = false;
      for (;;) {
        int timeout = -1;
        if (!cfg_.manual) timeout = static_cast<int>(std::max(0.0, std::ceil(nextTick - MonotonicMs())));
        const int r = poll(fds, 2, timeout);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
          PostEnd(errno, "poll", std::string("poll failed: ") + std::strerror(errno), false);
          onExit_();
          return;
        }
        if (stop_.load()) {
          onExit_();
          return;
        }
        if (fds[1].revents) {
          PostEnd(ESRCH, "pidfd", "target process exited", false);
          onExit_();
          return;
        }
        if (fds[0].revents & POLLIN) {
          uint64_t count;
          (void)!read(eventFd_, &count, sizeof count);
          triggered = true;
          break;
        }
        if (!cfg_.manual && MonotonicMs() >= nextTick) break;
      }
      if (!triggered) nextTick += period;

      const int buffer = TakeBuffer();
      ScanStats st;
      try {
        st = scanner_->Scan(buffer >= 0 ? pool_[static_cast<size_t>(buffer)] : nullptr, &stop_);
      } catch (const SysError& e) {
        ReturnBuffer(buffer);
        endFromError(e);
        onExit_();
        return;
      }
      if (st.cancelled) {
        ReturnBuffer(buffer);
        onExit_();
        return;
      }
      auto ev = std::make_unique<LoopEvent>();
      ev->kind = LoopEvent::Kind::kInterval;
      ev->seq = seq++;
      ev->tStartMs = prevEnd;
      ev->tEndMs = MonotonicMs();
      ev->stats = st;
      ev->buffer = buffer;
      prevEnd = ev->tEndMs;
      if (!cfg_.manual && ev->tEndMs >= nextTick) {
        const double ticks = std::floor((ev->tEndMs - nextTick) / period) + 1;
        ev->late = true;
        ev->lateMs = ev->tEndMs - nextTick;
        ev->skippedTicks = static_cast<uint32_t>(ticks);
        nextTick += ticks * period;
      }
      if (inFlight_.load() >= cfg_.maxInFlight) {
        ReturnBuffer(buffer);  // the listener is not keeping up: drop, the seq gap shows it
        continue;
      }
      inFlight_.fetch_add(1);
      if (!post_(ev)) {
        inFlight_.fetch_sub(1);
        ReturnBuffer(buffer);
      }
    }
  } catch (const std::bad_alloc&) {
    PostEnd(ENOMEM, "", "scan thread failed: out of memory", false);
    onExit_();
  } catch (const std::exception& e) {
    PostEnd(EIO, "", std::string("scan thread failed: ") + e.what(), false);
    onExit_();
  }
}

}  // namespace guestmem
}  // namespace dpa
