/*
 * Test target for the guest-memory scanner: a process holding "guest RAM" whose every write is
 * known, so a test can compare the scanner's bitmaps with the truth.
 *
 *   dirtier SPEC...   SPEC = name:MiB[:sparse] (a memfd named `name`, mapped shared, like QEMU's
 *                     memory-backend-memfd) or anon:MiB (an anonymous shared mapping)
 * Every region is filled with page-specific content unless :sparse (left untouched, so its pages
 * are absent from the page tables). Prints "ready PID ADDR0 BYTES0 [ADDR1 BYTES1 ...]".
 * Commands on stdin, one per line, each answered "ok" (or "error ...") on stdout; they act on
 * region 0:
 *   dirty P...        change the content of pages P (page indexes in the region)
 *   same P...         store the bytes each page already holds (a write with no content change)
 *   read P...         read one byte of pages P (faults absent pages in, with zero content)
 *   protect P N       mprotect pages [P, P+N) read-only: splits the mapping in /proc/PID/maps
 *   unmap             munmap the region
 *   exit              exit(0)
 * Compiled by the tests with `cc -O2`; not part of the product.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096u
#define MAX_REGIONS 8

static uint8_t *base[MAX_REGIONS];
static size_t bytes[MAX_REGIONS];
static int regions;

static uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static int parse_page(const char *tok, size_t *page) {
  char *end;
  unsigned long long p = strtoull(tok, &end, 10);
  if (*end || p >= bytes[0] / PAGE) return -1;
  *page = (size_t)p;
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (int i = 1; i < argc && regions < MAX_REGIONS; i++) {
    char name[64];
    unsigned mib;
    char extra[16] = "";
    if (sscanf(argv[i], "%63[^:]:%u:%15s", name, &mib, extra) < 2 || mib == 0) {
      fprintf(stderr, "bad spec %s\n", argv[i]);
      return 2;
    }
    size_t len = (size_t)mib << 20;
    void *m;
    if (strcmp(name, "anon") == 0) {
      m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    } else {
      int fd = memfd_create(name, MFD_CLOEXEC);
      if (fd < 0 || ftruncate(fd, (off_t)len) != 0) {
        perror("memfd");
        return 1;
      }
      m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
    }
    if (m == MAP_FAILED) {
      perror("mmap");
      return 1;
    }
    base[regions] = m;
    bytes[regions] = len;
    if (strcmp(extra, "sparse") != 0) {
      uint64_t *w = m;
      for (size_t k = 0; k < len / 8; k++) w[k] = mix(((uint64_t)regions << 48) ^ k);
    }
    regions++;
  }
  if (regions == 0) {
    fprintf(stderr, "usage: dirtier name:MiB[:sparse]...\n");
    return 2;
  }
  printf("ready %d", (int)getpid());
  for (int r = 0; r < regions; r++) printf(" 0x%llx %zu", (unsigned long long)(uintptr_t)base[r], bytes[r]);
  printf("\n");

  static char line[1 << 22];
  uint64_t generation = 0;
  while (fgets(line, sizeof line, stdin)) {
    char *save = NULL;
    char *cmd = strtok_r(line, " \n", &save);
    if (!cmd) continue;
    int bad = 0;
    if (strcmp(cmd, "dirty") == 0 || strcmp(cmd, "same") == 0 || strcmp(cmd, "read") == 0) {
      for (char *tok; (tok = strtok_r(NULL, " \n", &save));) {
        size_t p;
        if (parse_page(tok, &p)) {
          bad = 1;
          break;
        }
        volatile uint64_t *w = (volatile uint64_t *)(base[0] + p * PAGE);
        if (cmd[0] == 'd') {
          /* Word 0 counts up, so the page's content always differs from every earlier state. */
          generation++;
          w[0] = w[0] + 1;
          w[1 + (generation % 511)] ^= mix(generation) | 1;
        } else if (cmd[0] == 's') {
          for (unsigned k = 0; k < PAGE / 8; k++) w[k] = w[k];
        } else {
          (void)w[0];
        }
      }
    } else if (strcmp(cmd, "protect") == 0) {
      char *a = strtok_r(NULL, " \n", &save), *b = strtok_r(NULL, " \n", &save);
      size_t p, n = b ? strtoull(b, NULL, 10) : 0;
      if (!a || parse_page(a, &p) || n == 0 || p + n > bytes[0] / PAGE ||
          mprotect(base[0] + p * PAGE, n * PAGE, PROT_READ) != 0)
        bad = 1;
    } else if (strcmp(cmd, "unmap") == 0) {
      bad = munmap(base[0], bytes[0]) != 0;
    } else if (strcmp(cmd, "exit") == 0) {
      return 0;
    } else {
      bad = 1;
    }
    printf(bad ? "error %s\n" : "ok\n", cmd);
  }
  return 0;
}
