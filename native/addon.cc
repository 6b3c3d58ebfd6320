// Registration only. Teardown order: every native handle (KVM VM, guest-memory scanner) owns its
// thread and fds and is closed by its own close() or, at the latest, by its finalizer; nothing
// here holds state, so the addon can be loaded in several worker threads.
#include <napi.h>

#include "common/modules.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  dpa::InitBitmap(env, exports);
  dpa::InitKvm(env, exports);
  dpa::InitGuestmem(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(dpa_native, Init)
