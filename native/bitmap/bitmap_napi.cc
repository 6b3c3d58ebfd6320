// Node-API glue for the bitmap kernels and the Analyzer. Every call is synchronous: the kernels
// run at memory speed (a 32 MiB bitmap in a few ms), less than a thread hop would cost to
// arrange. Buffers are borrowed for the call only. TypeScript (src/bitmap) validates arguments
// with messages naming the option; the checks here only keep a bad direct call from reading or
// writing out of bounds.
#include <napi.h>

#include <cmath>
#include <memory>
#include <string>

#include "bitmap/analyzer.h"
#include "bitmap/bitmap.h"
#include "common/modules.h"
#include "common/napi_util.h"

namespace dpa {
namespace {

using bitmap::Analyzer;
using bitmap::AnalyzerConfig;

uint64_t Integer(const Napi::Value& v, const char* name, uint64_t min, uint64_t max) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(name) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(min) && d <= static_cast<double>(max)) || std::floor(d) != d)
    throw Napi::RangeError::New(v.Env(), std::string(name) + " must be an integer from " +
                                             std::to_string(min) + " to " + std::to_string(max));
  return static_cast<uint64_t>(d);
}

template <typename T>
struct View {
  T* data;
  size_t length;  // elements
};

template <typename T>
View<T> Typed(const Napi::Value& v, napi_typedarray_type type, const char* name, const char* typeName) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw Napi::TypeError::New(v.Env(), std::string(name) + " must be a " + typeName);
  const ByteView bytes = TypedArrayBytes(v, name);
  return {reinterpret_cast<T*>(bytes.data), bytes.bytes / sizeof(T)};
}

View<uint8_t> Bitmap(const Napi::Value& v, const char* name, uint64_t pages) {
  View<uint8_t> view = Typed<uint8_t>(v, napi_uint8_array, name, "Uint8Array");
  if (view.length < bitmap::BitmapBytes(pages))
    throw Napi::RangeError::New(v.Env(), std::string(name) + " is too small for the page count");
  return view;
}

uint64_t Pages(const Napi::Value& v) { return Integer(v, "pages", 0, bitmap::kMaxPages); }

Napi::Value Count(const Napi::CallbackInfo& info) {
  const uint64_t pages = Pages(info[1]);
  const View<uint8_t> bits = Bitmap(info[0], "bits", pages);
  return Napi::Number::New(info.Env(), static_cast<double>(bitmap::Active().count(bits.data, pages)));
}

Napi::Value OrInto(const Napi::CallbackInfo& info) {
  const uint64_t pages = Pages(info[2]);
  const View<uint8_t> dst = Bitmap(info[0], "dst", pages);
  const View<uint8_t> src = Bitmap(info[1], "src", pages);
  return Napi::Number::New(info.Env(), static_cast<double>(bitmap::Active().orInto(dst.data, src.data, pages)));
}

Napi::Value AndNot(const Napi::CallbackInfo& info) {
  const uint64_t pages = Pages(info[3]);
  const View<uint8_t> out = Bitmap(info[0], "out", pages);
  const View<uint8_t> a = Bitmap(info[1], "a", pages);
  const View<uint8_t> b = Bitmap(info[2], "b", pages);
  return Napi::Number::New(info.Env(),
                           static_cast<double>(bitmap::Active().andNot(out.data, a.data, b.data, pages)));
}

uint32_t RegionPages(const Napi::Value& v) {
  const uint64_t regionPages = Integer(v, "regionPages", bitmap::kMinRegionPages, bitmap::kMaxRegionPages);
  if (!bitmap::ValidRegionPages(regionPages))
    throw Napi::RangeError::New(v.Env(), "regionPages must be a power of two from 512 to 262144");
  return static_cast<uint32_t>(regionPages);
}

Napi::Value RegionHistogram(const Napi::CallbackInfo& info) {
  const uint64_t pages = Pages(info[1]);
  const View<uint8_t> bits = Bitmap(info[0], "bits", pages);
  const uint32_t regionPages = RegionPages(info[2]);
  const View<uint32_t> out = Typed<uint32_t>(info[3], napi_uint32_array, "out", "Uint32Array");
  const uint64_t regions = bitmap::RegionCount(pages, regionPages);
  if (out.length < regions) throw Napi::RangeError::New(info.Env(), "out is too small for the region count");
  bitmap::Active().regionHistogram(bits.data, pages, regionPages, out.data);
  return Napi::Number::New(info.Env(), static_cast<double>(regions));
}

Napi::Value Extents(const Napi::CallbackInfo& info) {
  const uint64_t pages = Pages(info[1]);
  const View<uint8_t> bits = Bitmap(info[0], "bits", pages);
  const View<uint32_t> out = Typed<uint32_t>(info[2], napi_uint32_array, "out", "Uint32Array");
  const uint64_t maxExtents = Integer(info[3], "maxExtents", 0, out.length / 2);
  const bitmap::ExtentsResult r = bitmap::Active().extents(bits.data, pages, out.data, maxExtents);
  Napi::Object result = Napi::Object::New(info.Env());
  result.Set("returned", Napi::Number::New(info.Env(), static_cast<double>(r.returned)));
  result.Set("total", Napi::Number::New(info.Env(), static_cast<double>(r.total)));
  return result;
}

Napi::Value Stream(const Napi::CallbackInfo& info) {
  const View<uint8_t> src = Typed<uint8_t>(info[0], napi_uint8_array, "src", "Uint8Array");
  const View<uint8_t> dst = Typed<uint8_t>(info[1], napi_uint8_array, "dst", "Uint8Array");
  const uint32_t threads = info[2].IsUndefined() ? 1 : static_cast<uint32_t>(Integer(info[2], "threads", 1, Analyzer::kMaxThreads));
  const uint64_t sum = bitmap::StreamOnThreads(src.data, src.length, dst.data, dst.length, threads);
  return Napi::Number::New(info.Env(), static_cast<double>(sum & ((uint64_t{1} << 53) - 1)));
}

Napi::Value SimdLevel(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), bitmap::LevelName(bitmap::ActiveLevel()));
}

Napi::Value SetSimdLevel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "level must be 'avx2', 'scalar' or 'auto'");
  const std::string level = info[0].As<Napi::String>().Utf8Value();
  if (level == "scalar") {
    bitmap::SetActiveLevel(bitmap::SimdLevel::kScalar);
  } else if (level == "avx2") {
    if (!bitmap::SetActiveLevel(bitmap::SimdLevel::kAvx2))
      throw Napi::Error::New(env, "level 'avx2' requested but this CPU lacks AVX2/BMI2/POPCNT");
  } else if (level == "auto") {
    bitmap::SetActiveLevel(bitmap::CpuHasAvx2() ? bitmap::SimdLevel::kAvx2 : bitmap::SimdLevel::kScalar);
  } else {
    throw Napi::RangeError::New(env, "level must be 'avx2', 'scalar' or 'auto'");
  }
  return Napi::String::New(env, bitmap::LevelName(bitmap::ActiveLevel()));
}

Napi::Value CpuHasAvx2(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), bitmap::CpuHasAvx2());
}

AnalyzerConfig Config(const Napi::CallbackInfo& info) {
  AnalyzerConfig c;
  c.pages = Integer(info[0], "pages", 1, bitmap::kMaxPages);
  c.heatIntervals = static_cast<uint32_t>(Integer(info[1], "heatIntervals", 1, Analyzer::kMaxHeatIntervals));
  c.curveLevels = static_cast<uint32_t>(Integer(info[2], "curveLevels", 1, Analyzer::kMaxCurveLevels));
  c.regionPages = RegionPages(info[3]);
  c.threads = info[4].IsUndefined() ? 0 : static_cast<uint32_t>(Integer(info[4], "threads", 0, Analyzer::kMaxThreads));
  return c;
}

class AnalyzerWrap : public Napi::ObjectWrap<AnalyzerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BitmapAnalyzer",
                       {
                           InstanceMethod<&AnalyzerWrap::Push>("push"),
                           InstanceMethod<&AnalyzerWrap::RegionHistogram>("regionHistogram"),
                           InstanceMethod<&AnalyzerWrap::HeatHistogram>("heatHistogram"),
                           InstanceMethod<&AnalyzerWrap::Heat>("heat"),
                           InstanceMethod<&AnalyzerWrap::DirtyCurve>("dirtyCurve"),
                           InstanceMethod<&AnalyzerWrap::ResetWindow>("resetWindow"),
                           InstanceMethod<&AnalyzerWrap::MemoryBytes>("memoryBytes"),
                           InstanceMethod<&AnalyzerWrap::Intervals>("intervals"),
                           InstanceMethod<&AnalyzerWrap::Threads>("threads"),
                           InstanceMethod<&AnalyzerWrap::LastTraffic>("lastTraffic"),
                           InstanceMethod<&AnalyzerWrap::ReplayLastPattern>("replayLastPattern"),
                           InstanceMethod<&AnalyzerWrap::Close>("close"),
                           StaticMethod<&AnalyzerWrap::MemoryFor>("memoryFor"),
                       });
  }

  explicit AnalyzerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AnalyzerWrap>(info) {
    const AnalyzerConfig config = Config(info);
    Guard(info.Env(), [&] { analyzer_ = std::make_unique<Analyzer>(config); });
    // Tell V8 about the native state so GC pressure reflects it (a 1 TiB guest: ~800 MiB).
    external_ = static_cast<int64_t>(Analyzer::MemoryFor(config).fixedBytes);
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), external_);
  }

  ~AnalyzerWrap() override = default;

  void Finalize(Napi::Env env) override { Release(env); }

 private:
  Analyzer& Get(Napi::Env env) {
    if (!analyzer_) throw Napi::Error::New(env, "BitmapAnalyzer is closed");
    return *analyzer_;
  }

  void Release(Napi::Env env) {
    if (!analyzer_) return;
    analyzer_.reset();
    Napi::MemoryManagement::AdjustExternalMemory(env, -external_);
    external_ = 0;
  }

  Napi::Value Push(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Analyzer& a = Get(env);
    const View<uint8_t> bits = Bitmap(info[0], "bitmap", a.Config().pages);
    const bitmap::PushResult r = a.Push(bits.data);
    Napi::Object result = Napi::Object::New(env);
    result.Set("dirtyPages", Napi::Number::New(env, static_cast<double>(r.dirtyPages)));
    result.Set("newlyDirtyInWindow", Napi::Number::New(env, static_cast<double>(r.newlyDirtyInWindow)));
    result.Set("windowDirtyPages", Napi::Number::New(env, static_cast<double>(r.windowDirtyPages)));
    return result;
  }

  Napi::Value RegionHistogram(const Napi::CallbackInfo& info) {
    Analyzer& a = Get(info.Env());
    const View<uint32_t> out = Typed<uint32_t>(info[0], napi_uint32_array, "out", "Uint32Array");
    if (out.length < a.RegionCount()) throw Napi::RangeError::New(info.Env(), "out is too small for the region count");
    a.RegionHistogram(out.data);
    return info.Env().Undefined();
  }

  Napi::Value HeatHistogram(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Analyzer& a = Get(env);
    const uint32_t bins = a.Config().heatIntervals + 1;
    std::unique_ptr<uint64_t[]> counts(new uint64_t[bins]);
    a.HeatHistogram(counts.get());
    if (info[0].IsTypedArray() && info[0].As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
      const View<double> out = Typed<double>(info[0], napi_float64_array, "out", "Float64Array");
      if (out.length < bins) throw Napi::RangeError::New(env, "out is too small: needs heatIntervals + 1 entries");
      for (uint32_t h = 0; h < bins; h++) out.data[h] = static_cast<double>(counts[h]);
    } else {
      const View<uint32_t> out = Typed<uint32_t>(info[0], napi_uint32_array, "out", "Float64Array or Uint32Array");
      if (out.length < bins) throw Napi::RangeError::New(env, "out is too small: needs heatIntervals + 1 entries");
      for (uint32_t h = 0; h < bins; h++) out.data[h] = static_cast<uint32_t>(counts[h]);
    }
    return env.Undefined();
  }

  Napi::Value Heat(const Napi::CallbackInfo& info) {
    Analyzer& a = Get(info.Env());
    const uint64_t page = Integer(info[0], "page", 0, a.Config().pages - 1);
    return Napi::Number::New(info.Env(), a.Heat(page));
  }

  Napi::Value DirtyCurve(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Analyzer& a = Get(env);
    const View<double> out = Typed<double>(info[0], napi_float64_array, "out", "Float64Array");
    const uint32_t levels = a.Config().curveLevels;
    if (out.length < levels) throw Napi::RangeError::New(env, "out is too small: needs curveLevels entries");
    uint64_t curve[Analyzer::kMaxCurveLevels];
    a.DirtyCurve(curve);
    for (uint32_t j = 0; j < levels; j++) out.data[j] = static_cast<double>(curve[j]);
    return env.Undefined();
  }

  Napi::Value ResetWindow(const Napi::CallbackInfo& info) {
    Get(info.Env()).ResetWindow();
    return info.Env().Undefined();
  }

  Napi::Value MemoryBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(Get(info.Env()).MemoryBytes()));
  }

  Napi::Value Intervals(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(Get(info.Env()).Intervals()));
  }

  Napi::Value Threads(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), Get(info.Env()).Threads());
  }

  Napi::Value LastTraffic(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const bitmap::PushTraffic& t = Get(env).LastTraffic();
    Napi::Object result = Napi::Object::New(env);
    result.Set("readBytes", Napi::Number::New(env, static_cast<double>(t.readBytes)));
    result.Set("writeBytes", Napi::Number::New(env, static_cast<double>(t.writeBytes)));
    result.Set("nonzeroWords", Napi::Number::New(env, static_cast<double>(t.nonzeroWords)));
    result.Set("evictedWords", Napi::Number::New(env, static_cast<double>(t.evictedWords)));
    result.Set("sweptWords", Napi::Number::New(env, static_cast<double>(t.sweptWords)));
    return result;
  }

  Napi::Value ReplayLastPattern(const Napi::CallbackInfo& info) {
    Analyzer& a = Get(info.Env());
    const View<uint8_t> bits = Bitmap(info[0], "bitmap", a.Config().pages);
    const uint64_t sum = a.ReplayLastPattern(bits.data);
    return Napi::Number::New(info.Env(), static_cast<double>(sum & ((uint64_t{1} << 53) - 1)));
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release(info.Env());
    return info.Env().Undefined();
  }

  static Napi::Value MemoryFor(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const bitmap::AnalyzerMemory m = Analyzer::MemoryFor(Config(info));
    Napi::Object result = Napi::Object::New(env);
    result.Set("fixedBytes", Napi::Number::New(env, static_cast<double>(m.fixedBytes)));
    result.Set("ringBytesMax", Napi::Number::New(env, static_cast<double>(m.ringBytesMax)));
    return result;
  }

  std::unique_ptr<Analyzer> analyzer_;
  int64_t external_ = 0;
};

}  // namespace

void InitBitmap(Napi::Env env, Napi::Object exports) {
  exports.Set("bitmapCount", Napi::Function::New<Count>(env, "bitmapCount"));
  exports.Set("bitmapOrInto", Napi::Function::New<OrInto>(env, "bitmapOrInto"));
  exports.Set("bitmapAndNot", Napi::Function::New<AndNot>(env, "bitmapAndNot"));
  exports.Set("bitmapRegionHistogram", Napi::Function::New<RegionHistogram>(env, "bitmapRegionHistogram"));
  exports.Set("bitmapExtents", Napi::Function::New<Extents>(env, "bitmapExtents"));
  exports.Set("bitmapStream", Napi::Function::New<Stream>(env, "bitmapStream"));
  exports.Set("bitmapSimdLevel", Napi::Function::New<SimdLevel>(env, "bitmapSimdLevel"));
  exports.Set("bitmapSetSimdLevel", Napi::Function::New<SetSimdLevel>(env, "bitmapSetSimdLevel"));
  exports.Set("bitmapCpuHasAvx2", Napi::Function::New<CpuHasAvx2>(env, "bitmapCpuHasAvx2"));
  exports.Set("BitmapAnalyzer", AnalyzerWrap::Define(env));
}

}  // namespace dpa
