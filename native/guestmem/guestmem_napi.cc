#include "common/modules.h"
#include "common/napi_util.h"

namespace dpa {
void InitGuestmem(Napi::Env, Napi::Object) {}
}  // namespace dpa
