#include "common/errors.h"

#include <cstring>

namespace dpa {

const char* ErrnoCode(int err) {
  const char* name = strerrorname_np(err);  // glibc >= 2.32
  return name ? name : "UNKNOWN";
}

void ThrowSys(const char* syscall, int err, const std::string& detail) {
  std::string message = std::string(ErrnoCode(err)) + ": " + std::strerror(err) + ", " + syscall;
  if (!detail.empty()) message += " (" + detail + ")";
  throw SysError(err, syscall, message);
}

}  // namespace dpa
