// Errors raised by core native code (no Node headers here). The Node-API glue turns a SysError
// into a JS Error carrying `code`, `errno` and `syscall` (see napi_util.h), like libuv's errors.
#pragma once
#include <cerrno>
#include <stdexcept>
#include <string>

namespace dpa {

struct SysError : std::runtime_error {
  SysError(int err, std::string syscall, const std::string& message)
      : std::runtime_error(message), err(err), syscall(std::move(syscall)) {}
  int err;              // positive errno value
  std::string syscall;  // e.g. "ioctl(KVM_GET_DIRTY_LOG)"
};

// "EIO" for 5, "UNKNOWN" when the libc has no name for it.
const char* ErrnoCode(int err);

// Throws SysError; `detail` is appended to the message ("... while creating vCPU 3").
[[noreturn]] void ThrowSys(const char* syscall, int err = errno, const std::string& detail = "");

}  // namespace dpa
