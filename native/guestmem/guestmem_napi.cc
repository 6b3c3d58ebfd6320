// Node-API glue of the guest-memory scanner: `GuestScanner` (a scan thread posting intervals to
// JS) and three short synchronous helpers (page hashing, one process_vm_readv copy, AVX2 check).
//
// Ownership and teardown:
// - `Shared` holds the scan loop and the references to the caller's bitmap pool. The JS object and
//   the thread-safe function (TSFN) each own a shared_ptr to it, so a queued event can still be
//   handled (or dropped) after the JS object was collected.
// - The scan thread owns the TSFN's only thread slot and releases it when it exits (after the end
//   event, if any): while the thread runs, the event loop stays alive; afterwards nothing holds it.
// - close() stops and joins the thread, frees the scanner (fds, hash table) and the pool
//   references; events still queued are dropped without calling JS. The finalizer and an
//   environment cleanup hook (worker exit) do the same if close() was never called.
// - Pool buffers: the thread writes only to buffers on its free list; a buffer is lent to JS for
//   the duration of one callback and returns to the free list when the callback returns. Pool
//   buffers must not be detached/transferred while the scanner is open.
#include <sys/uio.h>

#include <memory>
#include <string>
#include <vector>

#include "common/modules.h"
#include "common/napi_util.h"
#include "guestmem/page_hash.h"
#include "guestmem/scan_loop.h"
#include "guestmem/scanner.h"

namespace dpa {
namespace {

using guestmem::HashImpl;
using guestmem::LoopEvent;
using guestmem::ScanLoop;

struct Shared {
  napi_env env = nullptr;
  std::unique_ptr<ScanLoop> loop;
  std::vector<Napi::Reference<Napi::Uint8Array>> pool;
  bool closed = false;
  bool hookInstalled = false;
  int64_t externalBytes = 0;

  static void CleanupHook(void* arg) {
    auto* self = static_cast<Shared*>(arg);
    self->hookInstalled = false;  // running hooks are removed by Node itself
    self->Close();
  }

  // Main thread only. Safe to call repeatedly.
  void Close() {
    if (hookInstalled) {
      napi_remove_env_cleanup_hook(env, CleanupHook, this);
      hookInstalled = false;
    }
    if (closed) return;
    closed = true;
    if (loop) {
      loop->Stop();
      loop->ReleaseResources();
    }
    pool.clear();
    if (externalBytes) {
      int64_t ignored;
      napi_adjust_external_memory(env, -externalBytes, &ignored);
      externalBytes = 0;
    }
  }

  ~Shared() { Close(); }
};

void CallJs(Napi::Env env, Napi::Function callback, Shared* shared, LoopEvent* data);
using Tsfn = Napi::TypedThreadSafeFunction<Shared, LoopEvent, CallJs>;

Napi::Object StatsObject(Napi::Env env, const LoopEvent& ev) {
  Napi::Object o = Napi::Object::New(env);
  const guestmem::ScanStats& s = ev.stats;
  o.Set("seq", Napi::Number::New(env, static_cast<double>(ev.seq)));
  o.Set("tStartMonoMs", Napi::Number::New(env, ev.tStartMs));
  o.Set("tEndMonoMs", Napi::Number::New(env, ev.tEndMs));
  o.Set("pagesCompared", Napi::Number::New(env, static_cast<double>(s.pagesCompared)));
  o.Set("pagesRead", Napi::Number::New(env, static_cast<double>(s.pagesRead)));
  o.Set("pagesAbsent", Napi::Number::New(env, static_cast<double>(s.pagesAbsent)));
  o.Set("dirtyPages", Napi::Number::New(env, static_cast<double>(s.dirtyPages)));
  o.Set("dirtyEstimate", Napi::Number::New(env, s.dirtyEstimate));
  o.Set("bytesRead", Napi::Number::New(env, static_cast<double>(s.bytesRead)));
  o.Set("scanUs", Napi::Number::New(env, static_cast<double>(s.wallNs) / 1e3));
  o.Set("scanCpuUs", Napi::Number::New(env, static_cast<double>(s.cpuNs) / 1e3));
  o.Set("late", Napi::Boolean::New(env, ev.late));
  o.Set("lateMs", Napi::Number::New(env, ev.lateMs));
  o.Set("skippedTicks", Napi::Number::New(env, ev.skippedTicks));
  return o;
}

void CallJs(Napi::Env env, Napi::Function callback, Shared* shared, LoopEvent* data) {
  std::unique_ptr<LoopEvent> ev(data);
  if (!ev) return;
  // Whatever happens below (listener throws, env going away), the buffer goes back to the pool.
  struct Deliver {
    Shared* shared;
    const LoopEvent& ev;
    ~Deliver() {
      if (shared && shared->loop) shared->loop->Delivered(ev);
    }
  } deliver{shared, *ev};
  if (env == nullptr || shared == nullptr || shared->closed || callback.IsEmpty()) return;

  const char* kind = "interval";
  Napi::Value buffer = env.Undefined();
  Napi::Object info;
  switch (ev->kind) {
    case LoopEvent::Kind::kBaseline:
      kind = "baseline";
      info = StatsObject(env, *ev);
      break;
    case LoopEvent::Kind::kInterval:
      info = StatsObject(env, *ev);
      if (ev->buffer >= 0) buffer = Napi::Number::New(env, ev->buffer);
      break;
    case LoopEvent::Kind::kEnd:
      kind = "end";
      info = Napi::Object::New(env);
      info.Set("code", Napi::String::New(env, ErrnoCode(ev->err)));
      info.Set("errno", Napi::Number::New(env, -ev->err));
      info.Set("syscall", Napi::String::New(env, ev->syscall));
      info.Set("message", Napi::String::New(env, ev->message));
      info.Set("duringScan", Napi::Boolean::New(env, ev->duringScan));
      info.Set("tEndMonoMs", Napi::Number::New(env, ev->tEndMs));
      break;
  }
  callback.Call({Napi::String::New(env, kind), info, buffer});
}

// ---- option readers (TypeScript validated already; these only guard against misuse) ----------
double NumberOpt(const Napi::Object& o, const char* name, double min, double max) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max)) {
    throw Napi::RangeError::New(o.Env(), std::string(name) + " must be from " + std::to_string(min) + " to " +
                                             std::to_string(max));
  }
  return d;
}

bool BoolOpt(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

uint64_t BigIntOpt(Napi::Env env, const Napi::Value& v, const char* name) {
  if (!v.IsBigInt()) throw Napi::TypeError::New(env, std::string(name) + " must be a bigint");
  bool lossless = false;
  const uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(env, std::string(name) + " must fit in 64 unsigned bits");
  return u;
}

HashImpl HashOpt(Napi::Env env, const Napi::Value& v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "auto") return HashImpl::kAuto;
  if (s == "scalar") return HashImpl::kScalar;
  if (s == "avx2") return HashImpl::kAvx2;
  throw Napi::TypeError::New(env, "hash must be 'auto', 'scalar' or 'avx2'");
}

class GuestScanner : public Napi::ObjectWrap<GuestScanner> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "GuestScanner",
                       {InstanceMethod<&GuestScanner::ScanNow>("scanNow"),
                        InstanceMethod<&GuestScanner::Close>("close"),
                        InstanceAccessor<&GuestScanner::PagesTotal>("pagesTotal"),
                        InstanceAccessor<&GuestScanner::BitmapBytes>("bitmapBytes"),
                        InstanceAccessor<&GuestScanner::HashName>("hashImpl")});
  }

  // new GuestScanner(options, callback(kind, info, bufferIndex))
  explicit GuestScanner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GuestScanner>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
    if (!info[1].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
    const Napi::Object o = info[0].As<Napi::Object>();

    guestmem::ScannerConfig cfg;
    cfg.pid = static_cast<pid_t>(NumberOpt(o, "pid", 1, 4194304));
    Napi::Value segs = o.Get("segments");
    if (!segs.IsArray()) throw Napi::TypeError::New(env, "segments must be an array");
    const Napi::Array arr = segs.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Value s = arr.Get(i);
      if (!s.IsObject()) throw Napi::TypeError::New(env, "segments[i] must be an object");
      const Napi::Object so = s.As<Napi::Object>();
      guestmem::Segment seg;
      seg.address = BigIntOpt(env, so.Get("address"), "segments[i].address");
      seg.bytes = static_cast<uint64_t>(NumberOpt(so, "bytes", 4096, 9007199254740991.0));
      cfg.segments.push_back(seg);
    }
    cfg.chunkBytes = static_cast<size_t>(NumberOpt(o, "chunkBytes", 4096, 256 << 20));
    cfg.sampled = BoolOpt(o, "sampled");
    cfg.sampleFraction = NumberOpt(o, "sampleFraction", 1e-9, 1);
    cfg.strataPages = static_cast<uint32_t>(NumberOpt(o, "strataPages", 1, 65536));
    cfg.resampleEvery = static_cast<uint32_t>(NumberOpt(o, "resampleEvery", 1, 1e6));
    cfg.skipAbsent = BoolOpt(o, "skipAbsent");
    cfg.hash = HashOpt(env, o.Get("hash"));
    cfg.seed = BigIntOpt(env, o.Get("seed"), "seed");

    guestmem::LoopConfig loopCfg;
    loopCfg.intervalMs = static_cast<uint32_t>(NumberOpt(o, "intervalMs", 1, 3600000));
    loopCfg.manual = BoolOpt(o, "manual");
    loopCfg.maxInFlight = static_cast<uint32_t>(NumberOpt(o, "maxInFlight", 1, 1024));

    shared_ = std::make_shared<Shared>();
    shared_->env = env;
    auto scanner = Guard(env, [&] { return std::make_unique<guestmem::Scanner>(cfg); });
    bitmapBytes_ = scanner->bitmapBytes();
    pagesTotal_ = scanner->pages();
    avx2_ = scanner->usesAvx2();

    Napi::Value poolValue = o.Get("pool");
    if (!poolValue.IsArray()) throw Napi::TypeError::New(env, "pool must be an array of Uint8Array");
    const Napi::Array poolArr = poolValue.As<Napi::Array>();
    std::vector<uint8_t*> pool;
    for (uint32_t i = 0; i < poolArr.Length(); ++i) {
      Napi::Value b = poolArr.Get(i);
      if (!b.IsTypedArray() || b.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
        throw Napi::TypeError::New(env, "pool[i] must be a Uint8Array");
      }
      ByteView view = TypedArrayBytes(b, "pool[i]");
      if (view.bytes < bitmapBytes_) {
        throw Napi::RangeError::New(env, "pool[i] must hold at least " + std::to_string(bitmapBytes_) + " bytes");
      }
      shared_->pool.push_back(Napi::Persistent(b.As<Napi::Uint8Array>()));
      pool.push_back(view.data);
    }

    // The TSFN finalizer owns one shared_ptr so queued events never see a freed Shared.
    auto* tsfnOwner = new std::shared_ptr<Shared>(shared_);
    Tsfn tsfn = Tsfn::New(env, info[1].As<Napi::Function>(), "dpa.guestmem", 0, 1, shared_.get(),
                          [](Napi::Env, std::shared_ptr<Shared>* owner, Shared*) { delete owner; }, tsfnOwner);
    try {
      shared_->loop = std::make_unique<ScanLoop>(
          std::move(scanner), loopCfg, std::move(pool),
          [tsfn](std::unique_ptr<LoopEvent>& ev) {
            if (tsfn.NonBlockingCall(ev.get()) != napi_ok) return false;
            ev.release();  // now owned by the queue; CallJs frees it
            return true;
          },
          [tsfn] { tsfn.Release(); });
    } catch (const SysError& e) {
      tsfn.Release();
      throw MakeSysError(env, e);
    } catch (...) {
      tsfn.Release();
      throw;
    }
    // Registered after the TSFN's own hook so that it runs first (hooks run in reverse order):
    // the thread must be joined before Node tears the TSFN down.
    if (napi_add_env_cleanup_hook(env, Shared::CleanupHook, shared_.get()) == napi_ok) shared_->hookInstalled = true;
    shared_->externalBytes = static_cast<int64_t>(pagesTotal_ * 8 + cfg.chunkBytes);
    int64_t ignored;
    napi_adjust_external_memory(env, shared_->externalBytes, &ignored);
    shared_->loop->Start();
  }

  ~GuestScanner() override {
    if (shared_) shared_->Close();
  }

 private:
  Napi::Value ScanNow(const Napi::CallbackInfo& info) {
    if (!shared_->closed) shared_->loop->Trigger();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    shared_->Close();
    return info.Env().Undefined();
  }

  Napi::Value PagesTotal(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(pagesTotal_));
  }
  Napi::Value BitmapBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(bitmapBytes_));
  }
  Napi::Value HashName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), avx2_ ? "avx2" : "scalar");
  }

  std::shared_ptr<Shared> shared_;
  size_t bitmapBytes_ = 0;
  uint64_t pagesTotal_ = 0;
  bool avx2_ = false;
};

// guestmemHashPages(pages: Uint8Array (n * 4096 bytes), out: BigUint64Array (>= n), impl, seed)
Napi::Value HashPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ByteView pages = TypedArrayBytes(info[0], "pages");
  const ByteView out = TypedArrayBytes(info[1], "out");
  if (pages.bytes % guestmem::kPageBytes) throw Napi::RangeError::New(env, "pages: length must be a multiple of 4096");
  const size_t n = pages.bytes / guestmem::kPageBytes;
  if (out.bytes < n * 8 || reinterpret_cast<uintptr_t>(out.data) % 8) {
    throw Napi::RangeError::New(env, "out: must be an aligned BigUint64Array of at least one entry per page");
  }
  const HashImpl impl = HashOpt(env, info[2]);
  const uint64_t seed = BigIntOpt(env, info[3], "seed");
  Guard(env, [&] {
    const guestmem::HashKey key = guestmem::MakeHashKey(seed);
    guestmem::PickHashPages(impl)(key, pages.data, n, reinterpret_cast<uint64_t*>(out.data));
  });
  return env.Undefined();
}

// guestmemReadInto(pid, address: bigint, dest: Uint8Array): bytes copied. One process_vm_readv,
// a plain copy with no hashing: the bench compares it with the full scan.
Napi::Value ReadInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "pid must be a number");
  const pid_t pid = info[0].As<Napi::Number>().Int32Value();
  const uint64_t address = BigIntOpt(env, info[1], "address");
  const ByteView dest = TypedArrayBytes(info[2], "dest");
  iovec local{dest.data, dest.bytes};
  iovec remote{reinterpret_cast<void*>(address), dest.bytes};
  const ssize_t got = Guard(env, [&] {
    const ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n < 0) ThrowSys("process_vm_readv", errno, "pid " + std::to_string(pid));
    return n;
  });
  return Napi::Number::New(env, static_cast<double>(got));
}

Napi::Value CpuHasAvx2(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), guestmem::CpuHasAvx2());
}

}  // namespace

void InitGuestmem(Napi::Env env, Napi::Object exports) {
  exports.Set("GuestScanner", GuestScanner::Define(env));
  exports.Set("guestmemHashPages", Napi::Function::New<HashPages>(env, "guestmemHashPages"));
  exports.Set("guestmemReadInto", Napi::Function::New<ReadInto>(env, "guestmemReadInto"));
  exports.Set("guestmemCpuHasAvx2", Napi::Function::New<CpuHasAvx2>(env, "guestmemCpuHasAvx2"));
}

}  // namespace dpa
