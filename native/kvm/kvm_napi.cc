// Node-API glue of the calibration VM: `KvmCalibrationVm` (create, start a run, stats, close) and
// `kvmCapabilities()`. Results reach JavaScript through a thread-safe function; the harvest
// thread never blocks on it (NonBlockingCall, bounded in-flight count) and never touches V8.
//
// Ownership and teardown order:
//  - Core (VM fds and mappings, the Calibrator threads, the bitmap pool) is shared by the JS
//    wrapper and, while a run is active, by the TSFN context; whichever goes last frees it.
//  - The TSFN context also holds the JS references (onEnd, the pool's Uint8Arrays), so the pool
//    memory the harvest thread writes into cannot be collected during a run.
//  - The harvest thread's last act is End(): post the end message, Release() the TSFN. The TSFN
//    finalizer (main thread) joins it, removes the env cleanup hook and drops the context. Once
//    a run has ended, nothing of it keeps the event loop alive.
//  - An env cleanup hook, registered after the TSFN so that it runs before Node tears the TSFN
//    down, stops the threads when the environment exits with a run still active (worker
//    termination, process exit with an unref'd run).
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "common/modules.h"
#include "common/napi_util.h"
#include "kvm/calibrator.h"
#include "kvm/kvm_vm.h"

namespace dpa {
namespace {

using kvm::BitmapPool;
using kvm::Calibrator;
using kvm::EndReport;
using kvm::HarvestMode;
using kvm::IntervalReport;
using kvm::KvmVm;
using kvm::RunStats;

// Results posted but not yet handled by JS; past this the interval is counted as dropped rather
// than queued without bound while the event loop is busy.
constexpr int kMaxInflight = 256;

struct Message {
  bool end = false;
  IntervalReport interval;
  EndReport end_report;
};

class JsBitmapPool : public BitmapPool {
 public:
  void Reset(std::vector<uint8_t*> data) {
    data_ = std::move(data);
    busy_.reset(new std::atomic<bool>[data_.size()]);
    for (size_t i = 0; i < data_.size(); ++i) busy_[i] = false;
  }
  int Acquire() override {
    for (size_t i = 0; i < data_.size(); ++i) {
      bool expected = false;
      if (busy_[i].compare_exchange_strong(expected, true, std::memory_order_acquire)) return int(i);
    }
    return -1;
  }
  uint8_t* Data(int slot) override { return data_[size_t(slot)]; }
  void Release(int slot) override { busy_[size_t(slot)].store(false, std::memory_order_release); }
  bool Empty() const override { return data_.empty(); }

 private:
  std::vector<uint8_t*> data_;
  std::unique_ptr<std::atomic<bool>[]> busy_;
};

struct TsfnContext;
void CallJs(Napi::Env env, Napi::Function dispatch, TsfnContext* ctx, Message* msg);
using Tsfn = Napi::TypedThreadSafeFunction<TsfnContext, Message, CallJs>;

struct Core : kvm::IntervalSink {
  std::unique_ptr<KvmVm> vm;
  std::unique_ptr<Calibrator> calibrator;
  JsBitmapPool pool;
  Tsfn tsfn;
  bool tsfn_active = false;          // main thread only
  std::atomic<int> inflight{0};
  std::atomic<bool> closed{false};   // close() called: deliver nothing more to JS

  bool Deliver(const IntervalReport& r) override {
    if (inflight.load(std::memory_order_relaxed) >= kMaxInflight) return false;
    auto* m = new Message;
    m->interval = r;
    inflight.fetch_add(1, std::memory_order_relaxed);
    if (tsfn.NonBlockingCall(m) != napi_ok) {
      inflight.fetch_sub(1, std::memory_order_relaxed);
      delete m;
      return false;
    }
    return true;
  }
  void End(const EndReport& e) override {
    auto* m = new Message;
    m->end = true;
    m->end_report = e;
    if (tsfn.NonBlockingCall(m) != napi_ok) delete m;
    tsfn.Release();
  }
  void StopAndClose() {
    closed.store(true);
    if (calibrator) calibrator->Stop();
    if (vm) vm->Close();
  }
  ~Core() override { StopAndClose(); }
};

struct TsfnContext {
  std::shared_ptr<Core> core;
  Napi::FunctionReference on_end;
  std::vector<Napi::Reference<Napi::Uint8Array>> buffers;
};

void EnvCleanup(void* arg) { static_cast<Core*>(arg)->StopAndClose(); }

Napi::Object StatsToJs(Napi::Env env, const RunStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("intervals", double(s.intervals));
  o.Set("droppedIntervals", double(s.dropped_intervals));
  o.Set("bitmapDropped", double(s.bitmap_dropped));
  o.Set("lateIntervals", double(s.late_intervals));
  o.Set("skippedTicks", double(s.skipped_ticks));
  o.Set("mismatchedIntervals", double(s.mismatched_intervals));
  o.Set("mismatchedPages", double(s.mismatched_pages));
  o.Set("writes", double(s.writes));
  o.Set("truthPages", double(s.truth_pages));
  o.Set("measuredPages", double(s.measured_pages));
  o.Set("ringFullExits", double(s.ring_full_exits));
  o.Set("earlyHarvests", double(s.early_harvests));
  o.Set("foreignEntries", double(s.foreign_entries));
  o.Set("harvestUsTotal", s.harvest_us_total);
  o.Set("harvestUsMax", s.harvest_us_max);
  o.Set("compareUsTotal", s.compare_us_total);
  o.Set("guestRunUsTotal", s.guest_run_us_total);
  o.Set("firstStartMs", s.first_start_ms);
  o.Set("lastEndMs", s.last_end_ms);
  o.Set("harvestThreadCpuMs", s.harvest_thread_cpu_ms);
  o.Set("vcpuCpuMs", s.vcpu_cpu_ms);
  return o;
}

Napi::Object IntervalToJs(Napi::Env env, const IntervalReport& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("seq", double(r.seq));
  o.Set("tStartMs", r.t_start_ms);
  o.Set("tEndMs", r.t_end_ms);
  o.Set("writesRequested", double(r.writes_requested));
  o.Set("truthPages", double(r.truth_pages));
  o.Set("measuredPages", double(r.measured_pages));
  o.Set("mismatchedPages", double(r.missing_pages + r.extra_pages));
  o.Set("missingPages", double(r.missing_pages));
  o.Set("extraPages", double(r.extra_pages));
  o.Set("mismatchPage", r.mismatch_page < 0 ? env.Null() : Napi::Number::New(env, double(r.mismatch_page)));
  o.Set("harvestUs", r.harvest_us);
  o.Set("guestRunUs", r.guest_run_us);
  o.Set("compareUs", r.compare_us);
  o.Set("ringFullExits", double(r.ring_full_exits));
  o.Set("earlyHarvests", double(r.early_harvests));
  o.Set("late", r.late);
  o.Set("bitmapDropped", r.bitmap_dropped);
  return o;
}

void CallJs(Napi::Env env, Napi::Function dispatch, TsfnContext* ctx, Message* msg) {
  std::unique_ptr<Message> m(msg);
  // env is null while Node tears the TSFN down; the context may already be gone then.
  if (env == nullptr || ctx == nullptr) return;
  Core& core = *ctx->core;
  int slot = -1;
  if (!m->end) {
    core.inflight.fetch_sub(1, std::memory_order_relaxed);
    slot = m->interval.bitmap_slot;
  }
  struct SlotGuard {
    Core& core;
    int slot;
    ~SlotGuard() {
      if (slot >= 0) core.pool.Release(slot);
    }
  } guard{core, slot};
  if (core.closed.load()) return;
  // No C++ exception may leave this function (it is called from C). Listener calls go through
  // the C API: a listener's exception stays pending and Node reports it as uncaught, like an
  // event emitter's; while the environment shuts down the call just fails and is dropped.
  try {
    napi_value fn;
    napi_value arg;
    if (!m->end) {
      Napi::Object o = IntervalToJs(env, m->interval);
      if (slot >= 0) {
        Napi::Uint8Array buf = ctx->buffers[size_t(slot)].Value();
        if (buf.ArrayBuffer().IsDetached()) {
          // Transferred away by the caller: the pointer we hold is dead. Keep the slot busy
          // forever (never written again) and report the interval without a bitmap.
          guard.slot = -1;
          o.Set("bitmapDropped", true);
        } else {
          o.Set("bitmap", buf);
        }
      }
      fn = dispatch;
      arg = o;
    } else {
      const EndReport& e = m->end_report;
      Napi::Object o = Napi::Object::New(env);
      o.Set("code", e.code);
      o.Set("message", e.message);
      if (e.err != 0) {
        o.Set("errno", -e.err);
        o.Set("syscall", e.syscall);
      }
      o.Set("stats", StatsToJs(env, e.stats));
      fn = ctx->on_end.Value();
      arg = o;
    }
    napi_value result;
    napi_call_function(env, env.Undefined(), fn, 1, &arg, &result);
  } catch (const Napi::Error&) {
    // Building the result failed (the environment is going away): nothing to report to.
  }
}

void TsfnFinalize(Napi::Env env, void*, TsfnContext* ctx) {
  Core& core = *ctx->core;
  if (core.calibrator) core.calibrator->Join();
  napi_remove_env_cleanup_hook(env, EnvCleanup, &core);
  core.tsfn_active = false;
  delete ctx;
}

double NumberField(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

std::string StringField(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

class KvmCalibrationVm : public Napi::ObjectWrap<KvmCalibrationVm> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "KvmCalibrationVm",
                       {
                           InstanceMethod<&KvmCalibrationVm::Start>("start"),
                           InstanceMethod<&KvmCalibrationVm::Close>("close"),
                           InstanceMethod<&KvmCalibrationVm::Stats>("stats"),
                           InstanceMethod<&KvmCalibrationVm::ReadDirtyLog>("readDirtyLog"),
                           InstanceMethod<&KvmCalibrationVm::Ref>("ref"),
                           InstanceMethod<&KvmCalibrationVm::Unref>("unref"),
                           InstanceAccessor<&KvmCalibrationVm::GuestPages>("guestPages"),
                           InstanceAccessor<&KvmCalibrationVm::BitmapBytes>("bitmapBytes"),
                           InstanceAccessor<&KvmCalibrationVm::AuxBytes>("auxBytes"),
                           InstanceAccessor<&KvmCalibrationVm::Closed>("closed"),
                       });
  }

  explicit KvmCalibrationVm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KvmCalibrationVm>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "config must be an object");
    Napi::Object c = info[0].As<Napi::Object>();
    kvm::VmConfig config;
    config.guest_mib = uint64_t(NumberField(c, "guestMib"));
    config.vcpus = uint32_t(NumberField(c, "vcpus"));
    const std::string mode = StringField(c, "mode");
    if (mode != "bitmap" && mode != "ring") throw Napi::RangeError::New(env, "mode must be 'bitmap' or 'ring'");
    config.mode = mode == "ring" ? HarvestMode::kRing : HarvestMode::kBitmap;
    config.ring_entries = uint32_t(NumberField(c, "ringEntries"));
    core_ = std::make_shared<Core>();
    Guard(env, [&] { core_->vm = std::make_unique<KvmVm>(config); });
  }

  ~KvmCalibrationVm() override {
    if (core_) core_->StopAndClose();
  }

 private:
  // start(run, onInterval, onEnd, buffers): begins the run on native threads; returns at once.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Core& core = *core_;
    if (core.closed.load() || core.vm->closed()) Guard(env, [] { ThrowSys("ioctl(KVM_RUN)", EBADF, "the VM is closed"); });
    if (core.calibrator) throw Napi::Error::New(env, "a calibration VM runs once: start() was already called");
    if (!info[0].IsObject() || !info[1].IsFunction() || !info[2].IsFunction() || !info[3].IsArray())
      throw Napi::TypeError::New(env, "start(run, onInterval, onEnd, buffers) expects an object, two functions and an array");
    Napi::Object r = info[0].As<Napi::Object>();
    kvm::RunConfig run;
    const std::string pattern = StringField(r, "pattern");
    if (pattern == "uniform") run.workload.pattern = kvm::Pattern::kUniform;
    else if (pattern == "sequential") run.workload.pattern = kvm::Pattern::kSequential;
    else if (pattern == "zipf") run.workload.pattern = kvm::Pattern::kZipf;
    else throw Napi::RangeError::New(env, "pattern must be uniform, sequential or zipf");
    run.workload.rate_pages_per_sec = NumberField(r, "ratePagesPerSec");
    run.workload.hot_pages = uint64_t(NumberField(r, "hotPages"));
    run.workload.zipf_s = NumberField(r, "zipfS");
    run.workload.seed = uint64_t(NumberField(r, "seed"));
    run.interval_us = uint32_t(NumberField(r, "intervalMs") * 1000.0 + 0.5);
    run.max_intervals = uint64_t(NumberField(r, "maxIntervals"));

    auto* ctx = new TsfnContext;
    std::unique_ptr<TsfnContext> owned(ctx);
    ctx->core = core_;
    ctx->on_end = Napi::Persistent(info[2].As<Napi::Function>());
    Napi::Array buffers = info[3].As<Napi::Array>();
    std::vector<uint8_t*> data;
    const size_t need = core.vm->bitmap_words() * 8;
    for (uint32_t i = 0; i < buffers.Length(); ++i) {
      Napi::Value b = buffers.Get(i);
      if (!b.IsTypedArray() || b.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
        throw Napi::TypeError::New(env, "buffers must be Uint8Arrays");
      Napi::Uint8Array u8 = b.As<Napi::Uint8Array>();
      if (u8.ByteLength() < need)
        throw Napi::RangeError::New(env, "each bitmap buffer needs at least " + std::to_string(need) + " bytes");
      data.push_back(u8.Data());
      ctx->buffers.push_back(Napi::Persistent(u8));
    }
    Guard(env, [&] { core.calibrator = std::make_unique<Calibrator>(core.vm.get(), run, &core, &core.pool); });
    core.pool.Reset(std::move(data));

    core.tsfn = Tsfn::New(env, info[1].As<Napi::Function>(), "dpa.kvm.calibration", 0, 1, owned.release(), TsfnFinalize,
                          static_cast<void*>(nullptr));
    core.tsfn_active = true;
    napi_add_env_cleanup_hook(env, EnvCleanup, &core);
    try {
      Guard(env, [&] { core.calibrator->Start(); });
    } catch (...) {
      core.tsfn.Release();  // no thread started: let the TSFN finalize now
      throw;
    }
    return env.Undefined();
  }

  // close(): stops the threads (joining them; at most one guest run and one harvest) and releases
  // every fd and mapping. Idempotent. Nothing is delivered to JS afterwards.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    core_->StopAndClose();
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    RunStats s;
    if (core_->calibrator) s = core_->calibrator->Stats();
    return StatsToJs(info.Env(), s);
  }

  // readDirtyLog(out): KVM_GET_DIRTY_LOG of RAM into `out` without clearing; returns the number
  // of dirty pages. ENXIO in ring mode, EBADF after close().
  Napi::Value ReadDirtyLog(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ByteView out = TypedArrayBytes(info[0], "out");
    const size_t need = core_->vm->bitmap_words() * 8;
    if (out.bytes < need) throw Napi::RangeError::New(env, "out needs at least " + std::to_string(need) + " bytes");
    Guard(env, [&] { core_->vm->GetDirtyLog(out.data); });
    double pages = 0;
    for (size_t i = 0; i < need; ++i) pages += __builtin_popcount(out.data[i]);
    return Napi::Number::New(env, pages);
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (core_->tsfn_active) core_->tsfn.Ref(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (core_->tsfn_active) core_->tsfn.Unref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value GuestPages(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(core_->vm->guest_pages())); }
  Napi::Value BitmapBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(core_->vm->bitmap_words() * 8));
  }
  Napi::Value AuxBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(core_->vm->layout().bytes)); }
  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), core_->vm->closed()); }

  std::shared_ptr<Core> core_;
};

Napi::Value KvmCapabilitiesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvm::KvmCapabilities caps = Guard(env, [] { return kvm::ProbeCapabilities(); });
  Napi::Object o = Napi::Object::New(env);
  o.Set("apiVersion", caps.api_version);
  o.Set("manualDirtyLogProtect2", caps.manual_dirty_log_protect2);
  o.Set("dirtyRingMaxEntries", double(caps.dirty_ring_max_bytes / sizeof(kvm_dirty_gfn)));
  o.Set("maxVcpus", caps.max_vcpus);
  o.Set("physBits", caps.phys_bits);
  return o;
}

}  // namespace

void InitKvm(Napi::Env env, Napi::Object exports) {
  exports.Set("KvmCalibrationVm", KvmCalibrationVm::Define(env));
  exports.Set("kvmCapabilities", Napi::Function::New<KvmCapabilitiesJs>(env, "kvmCapabilities"));
  Napi::Object limits = Napi::Object::New(env);
  limits.Set("maxVcpus", double(kvm::kMaxVcpus));
  limits.Set("mailboxEntries", double(kvm::kMailboxEntries));
  exports.Set("kvmLimits", limits);
}

}  // namespace dpa
