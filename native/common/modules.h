// Each area of the addon registers its functions on `exports` (called once from addon.cc).
#pragma once
#include <napi.h>

namespace dpa {
void InitBitmap(Napi::Env env, Napi::Object exports);
void InitKvm(Napi::Env env, Napi::Object exports);
void InitGuestmem(Napi::Env env, Napi::Object exports);
}  // namespace dpa
