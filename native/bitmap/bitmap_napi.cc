#include "common/modules.h"
#include "common/napi_util.h"

namespace dpa {
void InitBitmap(Napi::Env, Napi::Object) {}
}  // namespace dpa
