// A minimal check harness for the native unit tests (no framework dependency): CHECK records a
// failure with file:line and keeps going; main() returns non-zero if anything failed.
#pragma once
#include <cstdio>
#include <cstdlib>

namespace dpa_test {
inline int& Failures() {
  static int n = 0;
  return n;
}
}  // namespace dpa_test

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++dpa_test::Failures();                                                \
    }                                                                        \
  } while (0)

#define CHECK_EQ(a, b)                                                                          \
  do {                                                                                          \
    auto _va = (a);                                                                             \
    auto _vb = (b);                                                                             \
    if (!(_va == _vb)) {                                                                        \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, \
                   #a, #b, (long long)_va, (long long)_vb);                                     \
      ++dpa_test::Failures();                                                                   \
    }                                                                                           \
  } while (0)

#define TEST_MAIN_END()                                                        \
  do {                                                                         \
    if (dpa_test::Failures()) std::fprintf(stderr, "%d check(s) failed\n", dpa_test::Failures()); \
    return dpa_test::Failures() ? 1 : 0;                                       \
  } while (0)
