// Node-API helpers shared by the glue files. Only *_napi.cc and addon.cc include this.
#pragma once
#include <napi.h>

#include <cstdint>
#include <utility>

#include "common/errors.h"

namespace dpa {

// JS Error with .code ("EIO"), .errno (negative, as libuv/Node report it) and .syscall.
inline Napi::Error MakeSysError(Napi::Env env, const SysError& e) {
  Napi::Error error = Napi::Error::New(env, e.what());
  error.Set("code", Napi::String::New(env, ErrnoCode(e.err)));
  error.Set("errno", Napi::Number::New(env, -e.err));
  error.Set("syscall", Napi::String::New(env, e.syscall));
  return error;
}

// Runs fn, converting core exceptions into JS exceptions. Argument validation happens in
// TypeScript first; checks here are a second line of defence and throw TypeError/RangeError.
template <typename Fn>
auto Guard(Napi::Env env, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const SysError& e) {
    throw MakeSysError(env, e);
  } catch (const std::invalid_argument& e) {
    throw Napi::TypeError::New(env, e.what());
  } catch (const std::out_of_range& e) {
    throw Napi::RangeError::New(env, e.what());
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(env, "ENOMEM: native allocation failed");
  }
}

// Borrow the bytes of a Uint8Array / BigUint64Array / Buffer passed by the caller (no copy).
struct ByteView {
  uint8_t* data = nullptr;
  size_t bytes = 0;
};

inline ByteView TypedArrayBytes(const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string(name) + " must be a TypedArray");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  ByteView out;
  out.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  out.bytes = ta.ByteLength();
  return out;
}

}  // namespace dpa
