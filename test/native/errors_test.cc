#include <cerrno>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "test_util.h"

int main() {
  CHECK(std::strcmp(dpa::ErrnoCode(EIO), "EIO") == 0);
  CHECK(std::strcmp(dpa::ErrnoCode(ENXIO), "ENXIO") == 0);
  try {
    dpa::ThrowSys("ioctl(KVM_GET_DIRTY_LOG)", EIO, "slot 0");
    CHECK(false);
  } catch (const dpa::SysError& e) {
    CHECK_EQ(e.err, EIO);
    CHECK(e.syscall == "ioctl(KVM_GET_DIRTY_LOG)");
    CHECK(std::string(e.what()).find("EIO: Input/output error, ioctl(KVM_GET_DIRTY_LOG) (slot 0)") == 0);
  }
  TEST_MAIN_END();
}
