/*
 * dpa-workload: the guest side of the dpa QEMU lab.
 *
 * Runs inside the lab guest (started by /init, as root, built static). It dirties an mlocked
 * memory buffer and writes its virtio disk at controlled rates and patterns, verifies its own
 * data, and tells the host what it did over a virtio-serial port, so the host can compare what
 * a dirty-page source saw with what was really written. The wire protocol (JSON lines both ways)
 * is documented in guest/PROTOCOL.md; the host side is src/lab/guest-channel.ts.
 *
 * Threads: the main thread owns the channel (reads commands, writes replies and interval
 * reports); one thread dirties memory, `queueDepth` threads (lanes) write the disk. Each
 * worker holds its own lock while it writes one tick's batch (the disk lanes share theirs), so
 * verification and reports taken under it see a consistent buffer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#define PROTOCOL_VERSION 1
#define PAGE_BYTES 4096u
#define WORDS_PER_PAGE (PAGE_BYTES / 8u)
#define MEM_MAGIC 0x314d454d31415044ull  /* "DPA1MEM1" little-endian */
#define DISK_MAGIC 0x314b534431415044ull /* "DPA1DSK1" little-endian */
#define FILL_STEP 0x9e3779b97f4a7c15ull
#define TICK_NS 10000000ll /* workers pace themselves in 10 ms ticks */
#define MAX_LINE_BYTES (64 * 1024)
#define MAX_BAD_REPORTED 8

/* ------------------------------------------------------------------ utilities */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* splitmix64 finalizer: the host (src/lab/guest-pattern.ts) implements the same function to check
 * page contents it reads from guest RAM, so it must never change without bumping PROTOCOL_VERSION. */
static uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

typedef struct { uint64_t s[4]; } rng_t;

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static void rng_seed(rng_t *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = seed = mix64(seed);
}

/* xoshiro256** */
static uint64_t rng_next(rng_t *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
  return result;
}

static double rng_unit(rng_t *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

static uint64_t rng_below(rng_t *r, uint64_t n) { return n ? rng_next(r) % n : 0; }

/* Fills one 4 KiB unit (a memory page, or a 4 KiB slice of a disk block) so that every word is a
 * function of (magic, id, generation, tag): anyone who knows mix64 can check it from its header. */
static void fill_unit(uint64_t *w, uint64_t magic, uint64_t id, uint64_t gen, uint64_t tag) {
  w[0] = magic; w[1] = id; w[2] = gen; w[3] = tag;
  uint64_t v = mix64(id * FILL_STEP ^ gen ^ tag), sum = magic ^ id ^ gen ^ tag;
  for (unsigned k = 4; k < WORDS_PER_PAGE - 1; k++) {
    w[k] = v ^ (k * FILL_STEP);
    sum ^= w[k];
  }
  w[WORDS_PER_PAGE - 1] = sum;
}

/* 0 when the unit is exactly what fill_unit(magic, id, gen, tag) wrote. */
static int check_unit(const uint64_t *w, uint64_t magic, uint64_t id, uint64_t gen, uint64_t tag) {
  if (w[0] != magic || w[1] != id || w[2] != gen || w[3] != tag) return 1;
  uint64_t v = mix64(id * FILL_STEP ^ gen ^ tag), sum = magic ^ id ^ gen ^ tag;
  for (unsigned k = 4; k < WORDS_PER_PAGE - 1; k++) {
    if (w[k] != (v ^ (k * FILL_STEP))) return 2;
    sum ^= w[k];
  }
  return w[WORDS_PER_PAGE - 1] == sum ? 0 : 3;
}

/* Order-independent digest of a set of (id, generation) pairs; the host recomputes it from RAM. */
static uint64_t digest_term(uint64_t id, uint64_t gen) { return mix64(id * 0xd6e8feb86659fd93ull + gen); }

/* ------------------------------------------------------------------ growable string */

typedef struct { char *p; size_t len, cap; } sb_t;

static void sb_reserve(sb_t *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) { perror("dpa-workload: realloc"); exit(70); }
  b->p = p; b->cap = cap;
}

static void sb_printf(sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sb_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  sb_reserve(b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

static void sb_json_string(sb_t *b, const char *s) {
  sb_printf(b, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') sb_printf(b, "\\%c", c);
    else if (c < 0x20) sb_printf(b, "\\u%04x", c);
    else sb_printf(b, "%c", c);
  }
  sb_printf(b, "\"");
}

static void sb_base64(sb_t *b, const uint8_t *data, size_t n) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  sb_reserve(b, (n + 2) / 3 * 4);
  char *o = b->p + b->len;
  size_t i = 0;
  for (; i + 2 < n; i += 3) {
    uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
    *o++ = tab[v >> 18]; *o++ = tab[(v >> 12) & 63]; *o++ = tab[(v >> 6) & 63]; *o++ = tab[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < n ? (uint32_t)data[i + 1] << 8 : 0);
    *o++ = tab[v >> 18]; *o++ = tab[(v >> 12) & 63];
    *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
    *o++ = '=';
  }
  b->len = (size_t)(o - b->p);
  b->p[b->len] = 0;
}

/* ------------------------------------------------------------------ flat JSON objects */

/* Commands are flat objects whose values are numbers, strings or booleans; that is all this
 * parser accepts, and it rejects anything else rather than guessing. */
#define MAX_FIELDS 32
typedef struct {
  int n;
  struct { char key[32]; char str[128]; double num; int type; /* 0 num, 1 str, 2 bool */ } f[MAX_FIELDS];
} jobj_t;

static const char *skip_ws(const char *p) {
  while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
  return p;
}

static const char *parse_jstring(const char *p, char *out, size_t cap) {
  if (*p != '"') return NULL;
  size_t n = 0;
  for (p++; *p && *p != '"'; p++) {
    char c = *p;
    if (c == '\\') {
      p++;
      switch (*p) {
        case '"': case '\\': case '/': c = *p; break;
        case 'n': c = '\n'; break;
        case 't': c = '\t'; break;
        default: return NULL; /* no \u: command strings are ASCII identifiers and paths */
      }
    }
    if (n + 1 >= cap) return NULL;
    out[n++] = c;
  }
  if (*p != '"') return NULL;
  out[n] = 0;
  return p + 1;
}

static int parse_jobj(const char *p, jobj_t *o) {
  o->n = 0;
  p = skip_ws(p);
  if (*p++ != '{') return -1;
  p = skip_ws(p);
  if (*p == '}') return *skip_ws(p + 1) ? -1 : 0;
  for (;;) {
    if (o->n == MAX_FIELDS) return -1;
    __typeof__(o->f[0]) *f = &o->f[o->n];
    p = parse_jstring(skip_ws(p), f->key, sizeof f->key);
    if (!p) return -1;
    p = skip_ws(p);
    if (*p++ != ':') return -1;
    p = skip_ws(p);
    f->str[0] = 0;
    f->num = 0;
    if (*p == '"') {
      p = parse_jstring(p, f->str, sizeof f->str);
      if (!p) return -1;
      f->type = 1;
    } else if (!strncmp(p, "true", 4)) {
      f->type = 2; f->num = 1; p += 4;
    } else if (!strncmp(p, "false", 5)) {
      f->type = 2; f->num = 0; p += 5;
    } else {
      char *end;
      errno = 0;
      f->num = strtod(p, &end);
      if (end == p || errno || !isfinite(f->num)) return -1;
      f->type = 0;
      p = end;
    }
    o->n++;
    p = skip_ws(p);
    if (*p == ',') { p++; continue; }
    if (*p == '}') return *skip_ws(p + 1) ? -1 : 0;
    return -1;
  }
}

static const __typeof__(((jobj_t *)0)->f[0]) *jget(const jobj_t *o, const char *key) {
  for (int i = 0; i < o->n; i++)
    if (!strcmp(o->f[i].key, key)) return &o->f[i];
  return NULL;
}

/* Reads an integer option, checking it against [lo, hi]; *err gets a message naming the option. */
static int64_t jint(const jobj_t *o, const char *key, int64_t def, int64_t lo, int64_t hi, char *err, size_t errcap) {
  const __typeof__(o->f[0]) *f = jget(o, key);
  if (!f) return def;
  if (f->type != 0 || f->num != floor(f->num) || f->num < (double)lo || f->num > (double)hi) {
    if (!*err) snprintf(err, errcap, "%s must be an integer in [%" PRId64 ", %" PRId64 "]", key, lo, hi);
    return def;
  }
  return (int64_t)f->num;
}

static double jnum(const jobj_t *o, const char *key, double def, double lo, double hi, char *err, size_t errcap) {
  const __typeof__(o->f[0]) *f = jget(o, key);
  if (!f) return def;
  if (f->type != 0 || f->num < lo || f->num > hi) {
    if (!*err) snprintf(err, errcap, "%s must be a number in [%g, %g]", key, lo, hi);
    return def;
  }
  return f->num;
}

static bool jbool(const jobj_t *o, const char *key, bool def, char *err, size_t errcap) {
  const __typeof__(o->f[0]) *f = jget(o, key);
  if (!f) return def;
  if (f->type != 2) {
    if (!*err) snprintf(err, errcap, "%s must be a boolean", key);
    return def;
  }
  return f->num != 0;
}

static const char *jstr(const jobj_t *o, const char *key, const char *def) {
  const __typeof__(o->f[0]) *f = jget(o, key);
  return f && f->type == 1 ? f->str : def;
}

/* ------------------------------------------------------------------ channel */

static int chan_fd = -1;
static pthread_mutex_t chan_lock = PTHREAD_MUTEX_INITIALIZER;

/* Writes one JSON line. A write to a virtio-serial port blocks while the host end is closed,
 * which is what we want: reports are never silently dropped. */
static void send_line(sb_t *b) {
  sb_printf(b, "\n");
  pthread_mutex_lock(&chan_lock);
  size_t off = 0;
  while (off < b->len) {
    ssize_t n = write(chan_fd, b->p + off, b->len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { usleep(1000); continue; }
      fprintf(stderr, "dpa-workload: channel write: %s\n", strerror(errno));
      break;
    }
    off += (size_t)n;
  }
  pthread_mutex_unlock(&chan_lock);
  b->len = 0;
  if (b->p) b->p[0] = 0;
}

/* Finds the virtio-serial port the host named (e.g. dpa.0): without udev there is no
 * /dev/virtio-ports/<name> link, so look the name up in sysfs. */
static int find_port(const char *name, char *path, size_t cap) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return -1;
  struct dirent *e;
  int found = -1;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[300], buf[128] = {0};
    snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == 0)) buf[--n] = 0;
    if (n > 0 && !strcmp(buf, name)) {
      snprintf(path, cap, "/dev/%s", e->d_name);
      found = 0;
      break;
    }
  }
  closedir(d);
  return found;
}

/* ------------------------------------------------------------------ access patterns */

enum pattern { PAT_UNIFORM, PAT_SEQUENTIAL, PAT_ZIPF };

static int parse_pattern(const char *s, enum pattern *p) {
  if (!strcmp(s, "uniform")) *p = PAT_UNIFORM;
  else if (!strcmp(s, "sequential")) *p = PAT_SEQUENTIAL;
  else if (!strcmp(s, "zipf")) *p = PAT_ZIPF;
  else return -1;
  return 0;
}

static const char *pattern_name(enum pattern p) {
  return p == PAT_UNIFORM ? "uniform" : p == PAT_SEQUENTIAL ? "sequential" : "zipf";
}

/* Picks unit indices in [0, n): uniform, a cyclic sweep, or Zipf(s) by rank where rank r is
 * unit r (so the hottest units are at the start of the hot set). */
typedef struct {
  enum pattern pat;
  uint64_t n, next;
  double *cdf; /* zipf only: cdf[r] = P(rank <= r) */
  rng_t rng;
} sampler_t;

static int sampler_init(sampler_t *s, enum pattern pat, uint64_t n, double zipf_s, uint64_t seed) {
  memset(s, 0, sizeof *s);
  s->pat = pat;
  s->n = n;
  rng_seed(&s->rng, seed);
  if (pat == PAT_ZIPF) {
    s->cdf = malloc(n * sizeof *s->cdf);
    if (!s->cdf) return -1;
    double total = 0;
    for (uint64_t r = 0; r < n; r++) s->cdf[r] = total += pow((double)(r + 1), -zipf_s);
    for (uint64_t r = 0; r < n; r++) s->cdf[r] /= total;
  }
  return 0;
}

static uint64_t sampler_next(sampler_t *s) {
  switch (s->pat) {
    case PAT_SEQUENTIAL: {
      uint64_t i = s->next;
      s->next = (i + 1) % s->n;
      return i;
    }
    case PAT_ZIPF: {
      double u = rng_unit(&s->rng);
      uint64_t lo = 0, hi = s->n - 1;
      while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (s->cdf[mid] < u) lo = mid + 1; else hi = mid;
      }
      return lo;
    }
    default:
      return rng_below(&s->rng, s->n);
  }
}

static void sampler_free(sampler_t *s) { free(s->cdf); s->cdf = NULL; }

/* Paces a worker at `rate` units/s in TICK_NS ticks. Time the worker did not get (vCPU starved,
 * e.g. by QEMU's auto-converge throttle) is only made up for up to MAX_CATCHUP_NS, so a throttled
 * guest really dirties less, as a real one would. rate 0 means "as fast as possible", bounded per
 * tick so the worker's mutex is released often. */
#define MAX_CATCHUP_NS 50000000ll
typedef struct { double rate, credit; int64_t last_ns, next_ns; uint64_t max_per_tick; } pacer_t;

static void pacer_init(pacer_t *p, double rate, uint64_t max_per_tick) {
  p->rate = rate; p->credit = 0; p->max_per_tick = max_per_tick;
  p->last_ns = p->next_ns = now_ns();
}

static uint64_t pacer_due(pacer_t *p) {
  if (p->rate <= 0) return p->max_per_tick;
  int64_t t = now_ns(), dt = t - p->last_ns;
  p->last_ns = t;
  if (dt > MAX_CATCHUP_NS) dt = MAX_CATCHUP_NS;
  p->credit += p->rate * (double)dt / 1e9;
  if (p->credit > (double)p->max_per_tick) p->credit = (double)p->max_per_tick;
  uint64_t due = (uint64_t)p->credit;
  p->credit -= (double)due;
  return due;
}

static void sleep_until(int64_t t_ns) {
  struct timespec ts = { .tv_sec = t_ns / 1000000000ll, .tv_nsec = t_ns % 1000000000ll };
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
}

static void pacer_sleep(pacer_t *p) {
  if (p->rate <= 0) return;
  p->next_ns += TICK_NS;
  int64_t t = now_ns();
  if (p->next_ns < t) p->next_ns = t; /* late: the credit above accounts for it */
  sleep_until(p->next_ns);
}

/* ------------------------------------------------------------------ memory workload */

typedef struct {
  pthread_mutex_t lock;
  pthread_t thread;
  volatile bool running, stop_requested;
  /* buffer: survives mem-stop so the host can still read and verify it */
  uint64_t *buf;
  uint64_t pages, hot_pages;
  uint64_t *gen; /* generation each page should hold; 0 = initial fill */
  uint64_t tag;
  /* run parameters */
  enum pattern pat;
  double rate, zipf_s;
  uint64_t seed;
  sampler_t sampler;
  /* counters (under lock) */
  uint64_t total_writes, interval_writes;
  uint8_t *touched; /* pages written since the last interval report, one bit per page */
} mem_t;

static mem_t mem = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void *mem_thread(void *arg) {
  (void)arg;
  pacer_t pace;
  pacer_init(&pace, mem.rate, 4096);
  while (!mem.stop_requested) {
    pthread_mutex_lock(&mem.lock);
    uint64_t due = pacer_due(&pace);
    for (uint64_t k = 0; k < due; k++) {
      uint64_t i = sampler_next(&mem.sampler);
      uint64_t g = ++mem.gen[i];
      fill_unit(mem.buf + i * WORDS_PER_PAGE, MEM_MAGIC, i, g, mem.tag);
      mem.touched[i >> 3] |= (uint8_t)(1u << (i & 7));
    }
    mem.total_writes += due;
    mem.interval_writes += due;
    pthread_mutex_unlock(&mem.lock);
    pacer_sleep(&pace);
  }
  return NULL;
}

static void mem_stop(void) {
  if (!mem.running) return;
  mem.stop_requested = true;
  pthread_join(mem.thread, NULL);
  mem.running = false;
  sampler_free(&mem.sampler);
}

static void mem_free_buffer(void) {
  if (!mem.buf) return;
  munmap(mem.buf, mem.pages * PAGE_BYTES);
  free(mem.gen);
  free(mem.touched);
  mem.buf = NULL; mem.gen = NULL; mem.touched = NULL;
  mem.pages = 0;
}

static int mem_alloc_buffer(uint64_t pages, uint64_t tag, char *err, size_t errcap) {
  size_t bytes = pages * PAGE_BYTES;
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { snprintf(err, errcap, "mmap %zu bytes: %s", bytes, strerror(errno)); return -1; }
  /* Keep the buffer in 4 KiB pages that never move: the host maps buffer pages to guest-physical
   * addresses once (report-gpa) and relies on that mapping afterwards. /init also turns THP off
   * and forbids compaction of mlocked pages. */
  madvise(p, bytes, MADV_NOHUGEPAGE);
  if (mlock(p, bytes) != 0) {
    snprintf(err, errcap, "mlock %zu bytes: %s", bytes, strerror(errno));
    munmap(p, bytes);
    return -1;
  }
  mem.buf = p;
  mem.pages = pages;
  mem.tag = tag;
  mem.gen = calloc(pages, sizeof *mem.gen);
  mem.touched = calloc((pages + 7) / 8, 1);
  mem.total_writes = 0;
  mem.interval_writes = 0;
  if (!mem.gen || !mem.touched) { snprintf(err, errcap, "out of memory"); mem_free_buffer(); return -1; }
  for (uint64_t i = 0; i < pages; i++) fill_unit(mem.buf + i * WORDS_PER_PAGE, MEM_MAGIC, i, 0, tag);
  return 0;
}

/* ------------------------------------------------------------------ disk workload */

static const char *disk_path = "/dev/vda";

#define MAX_DISK_LANES 64

/* One lane = one writer thread with one write in flight: `lanes` of them give the device a queue
 * depth of `lanes`, as a guest doing writeback or async I/O does. Lane l owns the region blocks
 * b with b % lanes == l, so a block is never written by two lanes at once and its final content
 * is always the generation its lane recorded last. */
typedef struct {
  pthread_t thread;
  unsigned index;
  sampler_t sampler; /* over the lane's own blocks, j -> block j * lanes + index */
  uint64_t *iobuf;   /* block_bytes, 4 KiB aligned for O_DIRECT */
} disk_lane_t;

typedef struct {
  /* Lanes hold it shared while they write a tick's batch; verification, summaries and reports
   * hold it exclusive, so they see every block at the generation recorded for it. */
  pthread_rwlock_t lock;
  volatile bool running, stop_requested;
  int fd;
  bool direct;
  uint64_t block_bytes, region_blocks, offset_bytes;
  uint64_t *gen; /* generation each region block should hold; 0 = never written by this run */
  uint64_t tag;
  enum pattern pat;
  double rate, zipf_s;
  unsigned lanes;
  disk_lane_t lane[MAX_DISK_LANES];
  uint64_t total_writes, interval_writes, total_syncs; /* updated atomically by the lanes */
  int last_errno;
} disk_t;

static disk_t disk = { .lock = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP, .fd = -1, .lanes = 1 };

static void disk_fill_block(uint64_t *w, uint64_t block, uint64_t gen) {
  uint64_t off = disk.offset_bytes + block * disk.block_bytes;
  /* each 4 KiB slice carries its own byte offset, so a misdirected or torn write is detected */
  for (uint64_t s = 0; s < disk.block_bytes / PAGE_BYTES; s++)
    fill_unit(w + s * WORDS_PER_PAGE, DISK_MAGIC, off + s * PAGE_BYTES, gen, disk.tag);
}

static uint64_t disk_lane_blocks(unsigned index) {
  return (disk.region_blocks - index + disk.lanes - 1) / disk.lanes;
}

static void *disk_thread(void *arg) {
  disk_lane_t *lane = arg;
  pacer_t pace;
  pacer_init(&pace, disk.rate / disk.lanes, 256);
  while (!disk.stop_requested) {
    pthread_rwlock_rdlock(&disk.lock);
    uint64_t due = pacer_due(&pace), ok = 0;
    for (uint64_t k = 0; k < due; k++) {
      uint64_t b = sampler_next(&lane->sampler) * disk.lanes + lane->index;
      uint64_t g = disk.gen[b] + 1;
      disk_fill_block(lane->iobuf, b, g);
      ssize_t n = pwrite(disk.fd, lane->iobuf, disk.block_bytes, (off_t)(disk.offset_bytes + b * disk.block_bytes));
      if (n != (ssize_t)disk.block_bytes) { __atomic_store_n(&disk.last_errno, n < 0 ? errno : EIO, __ATOMIC_RELAXED); break; }
      disk.gen[b] = g;
      ok++;
    }
    /* Buffered mode makes each tick's batch durable before it counts as done, so the host sees
     * the writes reach QEMU at (about) the requested rate rather than at writeback time. */
    if (ok && !disk.direct) {
      if (fdatasync(disk.fd) != 0) __atomic_store_n(&disk.last_errno, errno, __ATOMIC_RELAXED);
      __atomic_fetch_add(&disk.total_syncs, 1, __ATOMIC_RELAXED);
    }
    __atomic_fetch_add(&disk.total_writes, ok, __ATOMIC_RELAXED);
    __atomic_fetch_add(&disk.interval_writes, ok, __ATOMIC_RELAXED);
    pthread_rwlock_unlock(&disk.lock);
    pacer_sleep(&pace);
  }
  return NULL;
}

static void disk_free_lanes(void) {
  for (unsigned l = 0; l < MAX_DISK_LANES; l++) {
    sampler_free(&disk.lane[l].sampler);
    free(disk.lane[l].iobuf);
    disk.lane[l].iobuf = NULL;
  }
}

static void disk_stop(void) {
  if (!disk.running) return;
  disk.stop_requested = true;
  for (unsigned l = 0; l < disk.lanes; l++) pthread_join(disk.lane[l].thread, NULL);
  disk.running = false;
  if (disk.fd >= 0) fdatasync(disk.fd);
}

static uint64_t disk_size_bytes(void) {
  int fd = open(disk_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t bytes = 0;
  if (ioctl(fd, BLKGETSIZE64, &bytes) != 0) bytes = 0;
  close(fd);
  return bytes;
}

/* ------------------------------------------------------------------ commands */

static uint64_t mem_digest_expected(void) {
  uint64_t d = 0;
  for (uint64_t i = 0; i < mem.pages; i++) d ^= digest_term(i, mem.gen[i]);
  return d;
}

static void reply_err(sb_t *b, int64_t id, const char *msg) {
  sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":false,\"error\":", id);
  sb_json_string(b, msg);
  sb_printf(b, "}");
  send_line(b);
}

static void mem_summary(sb_t *b) {
  pthread_mutex_lock(&mem.lock);
  sb_printf(b, "\"mem\":{\"running\":%s,\"pages\":%" PRIu64 ",\"hotPages\":%" PRIu64 ",\"pattern\":\"%s\","
               "\"totalWrites\":%" PRIu64 ",\"tag\":\"%016" PRIx64 "\",\"digest\":\"%016" PRIx64 "\"}",
            mem.running ? "true" : "false", mem.pages, mem.hot_pages, pattern_name(mem.pat), mem.total_writes,
            mem.tag, mem.buf ? mem_digest_expected() : 0);
  pthread_mutex_unlock(&mem.lock);
}

static void disk_summary(sb_t *b) {
  pthread_rwlock_wrlock(&disk.lock);
  sb_printf(b, "\"disk\":{\"running\":%s,\"blockBytes\":%" PRIu64 ",\"regionBlocks\":%" PRIu64 ",\"offsetBytes\":%" PRIu64
               ",\"mode\":\"%s\",\"pattern\":\"%s\",\"queueDepth\":%u,\"totalWrites\":%" PRIu64 ",\"totalSyncs\":%" PRIu64 ",\"lastError\":",
            disk.running ? "true" : "false", disk.block_bytes, disk.region_blocks, disk.offset_bytes,
            disk.direct ? "direct" : "fsync", pattern_name(disk.pat), disk.lanes, disk.total_writes, disk.total_syncs);
  if (disk.last_errno) sb_json_string(b, strerror(disk.last_errno)); else sb_printf(b, "null");
  sb_printf(b, "}");
  pthread_rwlock_unlock(&disk.lock);
}

static void cmd_mem_start(sb_t *b, int64_t id, const jobj_t *o) {
  char err[160] = "";
  uint64_t pages = (uint64_t)jint(o, "mib", 16, 1, 1 << 16, err, sizeof err) * (1 << 20) / PAGE_BYTES;
  uint64_t hot = (uint64_t)jint(o, "hotPages", 0, 0, INT64_C(1) << 40, err, sizeof err);
  double rate = jnum(o, "ratePagesPerSec", 1000, 0, 1e9, err, sizeof err);
  double zs = jnum(o, "zipfS", 1.0, 0.0, 10.0, err, sizeof err);
  uint64_t seed = (uint64_t)jint(o, "seed", 1, 0, INT64_C(9007199254740991), err, sizeof err);
  enum pattern pat;
  if (!*err && parse_pattern(jstr(o, "pattern", "uniform"), &pat)) snprintf(err, sizeof err, "pattern must be uniform, sequential or zipf");
  if (!*err && hot > pages) snprintf(err, sizeof err, "hotPages must be <= the buffer's %" PRIu64 " pages", pages);
  if (*err) { reply_err(b, id, err); return; }
  if (!hot) hot = pages;
  mem_stop();
  pthread_mutex_lock(&mem.lock);
  /* A buffer of the same size is kept (and its generations go on counting) so runs can be chained
   * without re-dirtying every page; a new size starts over with a fresh tag. */
  if (mem.buf && mem.pages != pages) mem_free_buffer();
  if (!mem.buf && mem_alloc_buffer(pages, mix64(seed ^ (uint64_t)now_ns()), err, sizeof err)) {
    pthread_mutex_unlock(&mem.lock);
    reply_err(b, id, err);
    return;
  }
  mem.hot_pages = hot; mem.pat = pat; mem.rate = rate; mem.zipf_s = zs; mem.seed = seed;
  if (sampler_init(&mem.sampler, pat, hot, zs, seed)) {
    pthread_mutex_unlock(&mem.lock);
    reply_err(b, id, "out of memory for the zipf table");
    return;
  }
  /* touched/interval_writes are not reset: writes since the last report, also those of a run
   * just stopped, still belong to the next report. */
  mem.stop_requested = false;
  mem.running = true;
  pthread_create(&mem.thread, NULL, mem_thread, NULL);
  pthread_mutex_unlock(&mem.lock);
  sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,", id);
  mem_summary(b);
  sb_printf(b, "}");
  send_line(b);
}

static void cmd_disk_start(sb_t *b, int64_t id, const jobj_t *o) {
  char err[160] = "";
  uint64_t dev_bytes = disk_size_bytes();
  if (!dev_bytes) { reply_err(b, id, "no disk (/dev/vda missing or empty)"); return; }
  uint64_t bb = (uint64_t)jint(o, "blockBytes", 4096, 4096, 1 << 20, err, sizeof err);
  uint64_t off = (uint64_t)jint(o, "offsetBytes", 0, 0, (int64_t)dev_bytes, err, sizeof err);
  uint64_t region = (uint64_t)jint(o, "regionBlocks", 0, 0, INT64_C(1) << 40, err, sizeof err);
  double rate = jnum(o, "blocksPerSec", 100, 0, 1e7, err, sizeof err);
  double zs = jnum(o, "zipfS", 1.0, 0.0, 10.0, err, sizeof err);
  uint64_t seed = (uint64_t)jint(o, "seed", 1, 0, INT64_C(9007199254740991), err, sizeof err);
  unsigned lanes = (unsigned)jint(o, "queueDepth", 1, 1, MAX_DISK_LANES, err, sizeof err);
  const char *mode = jstr(o, "mode", "direct");
  enum pattern pat;
  if (!*err && parse_pattern(jstr(o, "pattern", "sequential"), &pat)) snprintf(err, sizeof err, "pattern must be uniform, sequential or zipf");
  if (!*err && bb % PAGE_BYTES) snprintf(err, sizeof err, "blockBytes must be a multiple of 4096");
  if (!*err && off % PAGE_BYTES) snprintf(err, sizeof err, "offsetBytes must be a multiple of 4096");
  if (!*err && strcmp(mode, "direct") && strcmp(mode, "fsync")) snprintf(err, sizeof err, "mode must be direct or fsync");
  if (!*err) {
    uint64_t fit = (dev_bytes - off) / bb;
    if (!region) region = fit;
    if (!region || region > fit) snprintf(err, sizeof err, "regionBlocks must be in [1, %" PRIu64 "] for this disk", fit);
    else if (region < lanes) snprintf(err, sizeof err, "queueDepth must be <= regionBlocks (%" PRIu64 ")", region);
  }
  if (*err) { reply_err(b, id, err); return; }
  disk_stop();
  pthread_rwlock_wrlock(&disk.lock);
  bool direct = !strcmp(mode, "direct");
  /* Same geometry: keep the generations, so verification covers every run since. */
  bool same = disk.gen && disk.block_bytes == bb && disk.region_blocks == region && disk.offset_bytes == off;
  if (!same) {
    free(disk.gen);
    disk.gen = calloc(region, sizeof *disk.gen);
    if (!disk.gen) {
      pthread_rwlock_unlock(&disk.lock);
      reply_err(b, id, "out of memory");
      return;
    }
    disk.block_bytes = bb; disk.region_blocks = region; disk.offset_bytes = off;
    disk.tag = mix64(seed ^ 0x5a5a5a5a ^ (uint64_t)now_ns());
    disk.total_writes = 0;
    disk.total_syncs = 0;
    disk.interval_writes = 0;
  }
  if (disk.fd >= 0 && disk.direct != direct) { close(disk.fd); disk.fd = -1; }
  if (disk.fd < 0) {
    disk.fd = open(disk_path, O_RDWR | O_CLOEXEC | (direct ? O_DIRECT : 0));
    if (disk.fd < 0) {
      snprintf(err, sizeof err, "open %s: %s", disk_path, strerror(errno));
      pthread_rwlock_unlock(&disk.lock);
      reply_err(b, id, err);
      return;
    }
  }
  disk.direct = direct; disk.pat = pat; disk.rate = rate; disk.zipf_s = zs; disk.lanes = lanes;
  disk_free_lanes();
  for (unsigned l = 0; l < lanes; l++) {
    disk_lane_t *lane = &disk.lane[l];
    lane->index = l;
    /* lane 0 keeps the run's seed, so queueDepth 1 writes exactly what it always did */
    if (posix_memalign((void **)&lane->iobuf, PAGE_BYTES, bb) || sampler_init(&lane->sampler, pat, disk_lane_blocks(l), zs, seed + l * 0x9e3779b97f4a7c15ull)) {
      lane->iobuf = NULL;
      disk_free_lanes();
      pthread_rwlock_unlock(&disk.lock);
      reply_err(b, id, "out of memory for the disk lanes");
      return;
    }
  }
  disk.last_errno = 0;
  disk.stop_requested = false;
  disk.running = true;
  for (unsigned l = 0; l < lanes; l++) pthread_create(&disk.lane[l].thread, NULL, disk_thread, &disk.lane[l]);
  pthread_rwlock_unlock(&disk.lock);
  sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,", id);
  disk_summary(b);
  sb_printf(b, "}");
  send_line(b);
}

/* Checks every page of the buffer against the generation it should hold, under the worker's
 * lock (the worker pauses for the duration). */
static void verify_mem(sb_t *b) {
  pthread_mutex_lock(&mem.lock);
  uint64_t bad = 0, content = 0, expected = 0, reported = 0;
  sb_t bads = {0};
  for (uint64_t i = 0; i < mem.pages; i++) {
    const uint64_t *w = mem.buf + i * WORDS_PER_PAGE;
    expected ^= digest_term(i, mem.gen[i]);
    content ^= digest_term(w[1], w[2]);
    if (check_unit(w, MEM_MAGIC, i, mem.gen[i], mem.tag)) {
      if (reported++ < MAX_BAD_REPORTED) sb_printf(&bads, "%s%" PRIu64, bad ? "," : "", i);
      bad++;
    }
  }
  sb_printf(b, "\"mem\":{\"pages\":%" PRIu64 ",\"badPages\":%" PRIu64 ",\"firstBad\":[%s],\"digest\":\"%016" PRIx64
               "\",\"contentDigest\":\"%016" PRIx64 "\",\"totalWrites\":%" PRIu64 "}",
            mem.pages, bad, bads.p ? bads.p : "", expected, content, mem.total_writes);
  free(bads.p);
  pthread_mutex_unlock(&mem.lock);
}

/* Reads back every region block this run wrote (generation > 0) with O_DIRECT, so the check sees
 * what the device returns, not the page cache. */
static void verify_disk(sb_t *b) {
  pthread_rwlock_wrlock(&disk.lock);
  uint64_t checked = 0, bad = 0, reported = 0;
  sb_t bads = {0};
  int err = 0;
  int fd = open(disk_path, O_RDONLY | O_DIRECT | O_CLOEXEC);
  uint64_t *rb = NULL;
  if (fd < 0 || posix_memalign((void **)&rb, PAGE_BYTES, disk.block_bytes)) err = fd < 0 ? errno : ENOMEM;
  if (!err && !disk.direct && disk.fd >= 0) fdatasync(disk.fd);
  for (uint64_t blk = 0; !err && blk < disk.region_blocks; blk++) {
    if (!disk.gen[blk]) continue;
    uint64_t off = disk.offset_bytes + blk * disk.block_bytes;
    ssize_t n = pread(fd, rb, disk.block_bytes, (off_t)off);
    if (n != (ssize_t)disk.block_bytes) { err = n < 0 ? errno : EIO; break; }
    checked++;
    int ok = 1;
    for (uint64_t s = 0; s < disk.block_bytes / PAGE_BYTES; s++)
      if (check_unit(rb + s * WORDS_PER_PAGE, DISK_MAGIC, off + s * PAGE_BYTES, disk.gen[blk], disk.tag)) ok = 0;
    if (!ok) {
      if (reported++ < MAX_BAD_REPORTED) sb_printf(&bads, "%s%" PRIu64, bad ? "," : "", blk);
      bad++;
    }
  }
  if (fd >= 0) close(fd);
  free(rb);
  sb_printf(b, "\"disk\":{\"checkedBlocks\":%" PRIu64 ",\"badBlocks\":%" PRIu64 ",\"firstBad\":[%s],\"totalWrites\":%" PRIu64
               ",\"error\":", checked, bad, bads.p ? bads.p : "", disk.total_writes);
  if (err) sb_json_string(b, strerror(err)); else sb_printf(b, "null");
  sb_printf(b, "}");
  free(bads.p);
  pthread_rwlock_unlock(&disk.lock);
}

static void cmd_verify(sb_t *b, int64_t id, const jobj_t *o) {
  const char *what = jstr(o, "target", "all");
  bool want_mem = !strcmp(what, "all") || !strcmp(what, "mem");
  bool want_disk = !strcmp(what, "all") || !strcmp(what, "disk");
  if (!want_mem && !want_disk) { reply_err(b, id, "target must be mem, disk or all"); return; }
  if (want_mem && !mem.buf) { reply_err(b, id, "no memory buffer: run mem-start first"); return; }
  if (want_disk && !disk.gen) { reply_err(b, id, "no disk run: run disk-start first"); return; }
  sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true", id);
  if (want_mem) { sb_printf(b, ","); verify_mem(b); }
  if (want_disk) { sb_printf(b, ","); verify_disk(b); }
  sb_printf(b, "}");
  send_line(b);
}

/* Maps the buffer to guest-physical addresses through /proc/self/pagemap (PFNs are visible to
 * root). Reported as runs [bufferPage, gpa, pages, step]: buffer page bufferPage + k is at
 * gpa + k * step * 4096 for k < pages, step being 1 or -1. */
static void cmd_report_gpa(sb_t *b, int64_t id) {
  if (!mem.buf) { reply_err(b, id, "no memory buffer: run mem-start first"); return; }
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) { reply_err(b, id, "open /proc/self/pagemap failed"); return; }
  pthread_mutex_lock(&mem.lock);
  uint64_t n = mem.pages, *ent = malloc(n * 8);
  off_t off = (off_t)((uintptr_t)mem.buf / PAGE_BYTES * 8);
  ssize_t got = ent ? pread(fd, ent, n * 8, off) : -1;
  close(fd);
  if (got != (ssize_t)(n * 8)) {
    pthread_mutex_unlock(&mem.lock);
    free(ent);
    reply_err(b, id, "short read of /proc/self/pagemap");
    return;
  }
  sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,\"pageBytes\":%u,\"pages\":%" PRIu64 ",\"tag\":\"%016" PRIx64 "\",\"runs\":[",
            id, PAGE_BYTES, n, mem.tag);
  uint64_t missing = 0, runs = 0;
  for (uint64_t i = 0; i < n;) {
    uint64_t e = ent[i], pfn = e & ((1ull << 55) - 1);
    if (!(e >> 63) || !pfn) { missing++; i++; continue; }
    /* The buddy allocator often hands out descending frames, so runs go either way. */
    int step = 1;
    if (i + 1 < n && (ent[i + 1] >> 63) && (ent[i + 1] & ((1ull << 55) - 1)) == pfn - 1) step = -1;
    uint64_t j = i + 1;
    while (j < n && (ent[j] >> 63) && (ent[j] & ((1ull << 55) - 1)) == pfn + (uint64_t)((int64_t)step * (int64_t)(j - i))) j++;
    sb_printf(b, "%s[%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%d]", runs++ ? "," : "", i, pfn * PAGE_BYTES, j - i, step);
    i = j;
  }
  sb_printf(b, "],\"unmappedPages\":%" PRIu64 "}", missing);
  pthread_mutex_unlock(&mem.lock);
  free(ent);
  send_line(b);
}

static void cmd_quiesce(sb_t *b, int64_t id) {
  mem_stop();
  disk_stop();
  sync();
  sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,", id);
  mem_summary(b);
  sb_printf(b, ",");
  disk_summary(b);
  sb_printf(b, "}");
  send_line(b);
}

/* ------------------------------------------------------------------ interval reports */

static int64_t report_interval_ns = 1000000000ll;
static bool report_page_sets;
static uint64_t report_seq;
static int64_t last_report_ns;

static void send_interval(sb_t *b) {
  int64_t t = now_ns();
  sb_printf(b, "{\"event\":\"interval\",\"seq\":%" PRIu64 ",\"tMs\":%.3f,\"intervalMs\":%.3f", report_seq++, t / 1e6,
            (t - last_report_ns) / 1e6);
  last_report_ns = t;
  pthread_mutex_lock(&mem.lock);
  if (mem.buf) {
    uint64_t distinct = 0, nbytes = (mem.pages + 7) / 8;
    for (uint64_t i = 0; i < nbytes; i++) distinct += (uint64_t)__builtin_popcount(mem.touched[i]);
    sb_printf(b, ",\"mem\":{\"running\":%s,\"writes\":%" PRIu64 ",\"distinctPages\":%" PRIu64 ",\"totalWrites\":%" PRIu64,
              mem.running ? "true" : "false", mem.interval_writes, distinct, mem.total_writes);
    if (report_page_sets) { sb_printf(b, ",\"pageSet\":\""); sb_base64(b, mem.touched, nbytes); sb_printf(b, "\""); }
    sb_printf(b, "}");
    memset(mem.touched, 0, nbytes);
    mem.interval_writes = 0;
  }
  pthread_mutex_unlock(&mem.lock);
  pthread_rwlock_wrlock(&disk.lock);
  if (disk.gen) {
    sb_printf(b, ",\"disk\":{\"running\":%s,\"writes\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"totalWrites\":%" PRIu64 "}",
              disk.running ? "true" : "false", disk.interval_writes, disk.interval_writes * disk.block_bytes, disk.total_writes);
    disk.interval_writes = 0;
  }
  pthread_rwlock_unlock(&disk.lock);
  sb_printf(b, "}");
  send_line(b);
}

static void cmd_reports(sb_t *b, int64_t id, const jobj_t *o) {
  char err[160] = "";
  int64_t ms = jint(o, "intervalMs", report_interval_ns / 1000000, 0, 3600000, err, sizeof err);
  bool sets = jbool(o, "pageSets", report_page_sets, err, sizeof err);
  if (!*err && ms > 0 && ms < 10) snprintf(err, sizeof err, "intervalMs must be 0 (off) or in [10, 3600000]");
  if (*err) { reply_err(b, id, err); return; }
  report_interval_ns = ms * 1000000ll;
  report_page_sets = sets;
  last_report_ns = now_ns();
  sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,\"intervalMs\":%" PRId64 ",\"pageSets\":%s}", id, ms, sets ? "true" : "false");
  send_line(b);
}

static double uptime_ms(void) {
  double up = 0;
  FILE *f = fopen("/proc/uptime", "re");
  if (f) { if (fscanf(f, "%lf", &up) != 1) up = 0; fclose(f); }
  return up * 1000;
}

static void handle_line(sb_t *b, const char *line) {
  jobj_t o;
  if (parse_jobj(line, &o)) { reply_err(b, -1, "malformed command: expected a flat JSON object"); return; }
  char err[160] = "";
  int64_t id = jint(&o, "id", -1, -1, INT64_C(9007199254740991), err, sizeof err);
  const char *cmd = jstr(&o, "cmd", "");
  if (*err) { reply_err(b, -1, err); return; }
  if (!strcmp(cmd, "ping")) {
    sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,\"uptimeMs\":%.0f}", id, uptime_ms());
    send_line(b);
  } else if (!strcmp(cmd, "mem-start")) cmd_mem_start(b, id, &o);
  else if (!strcmp(cmd, "mem-stop")) {
    mem_stop();
    sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,", id); mem_summary(b); sb_printf(b, "}"); send_line(b);
  } else if (!strcmp(cmd, "disk-start")) cmd_disk_start(b, id, &o);
  else if (!strcmp(cmd, "disk-stop")) {
    disk_stop();
    sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,", id); disk_summary(b); sb_printf(b, "}"); send_line(b);
  } else if (!strcmp(cmd, "verify")) cmd_verify(b, id, &o);
  else if (!strcmp(cmd, "report-gpa")) cmd_report_gpa(b, id);
  else if (!strcmp(cmd, "quiesce")) cmd_quiesce(b, id);
  else if (!strcmp(cmd, "reports")) cmd_reports(b, id, &o);
  else if (!strcmp(cmd, "status")) {
    sb_printf(b, "{\"id\":%" PRId64 ",\"ok\":true,\"uptimeMs\":%.0f,", id, uptime_ms());
    mem_summary(b); sb_printf(b, ","); disk_summary(b); sb_printf(b, "}"); send_line(b);
  } else {
    char msg[200];
    snprintf(msg, sizeof msg, "unknown cmd '%.64s' (ping, mem-start, mem-stop, disk-start, disk-stop, verify, report-gpa, quiesce, reports, status)", cmd);
    reply_err(b, id, msg);
  }
}

/* Kernel command line `dpa.mem=mib:64,pattern:zipf` (or dpa.disk=..., dpa.reports=...) becomes
 * the command {"cmd":"mem-start","mib":64,"pattern":"zipf"} run after `ready`, so a guest can
 * start working without a host connection. */
static void run_cmdline_commands(sb_t *b) {
  char cl[4096] = {0};
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, cl, sizeof cl - 1);
  close(fd);
  if (n <= 0) return;
  static const struct { const char *param, *cmd; } map[] = {
    { "dpa.reports=", "reports" }, { "dpa.mem=", "mem-start" }, { "dpa.disk=", "disk-start" } };
  for (size_t m = 0; m < sizeof map / sizeof map[0]; m++) {
    char *p = strstr(cl, map[m].param);
    if (!p) continue;
    p += strlen(map[m].param);
    char arg[1024];
    size_t len = strcspn(p, " \n");
    if (len >= sizeof arg) continue;
    memcpy(arg, p, len);
    arg[len] = 0;
    sb_t j = {0};
    sb_printf(&j, "{\"id\":0,\"cmd\":\"%s\"", map[m].cmd);
    for (char *save = NULL, *kv = strtok_r(arg, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
      char *colon = strchr(kv, ':');
      if (!colon) continue;
      *colon = 0;
      char *v = colon + 1, *end;
      strtod(v, &end);
      if (*v && !*end) sb_printf(&j, ",\"%s\":%s", kv, v);
      else if (!strcmp(v, "true") || !strcmp(v, "false")) sb_printf(&j, ",\"%s\":%s", kv, v);
      else sb_printf(&j, ",\"%s\":\"%s\"", kv, v);
    }
    sb_printf(&j, "}");
    handle_line(b, j.p);
    free(j.p);
  }
}

int main(int argc, char **argv) {
  const char *port = "dpa.0";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--port")) port = argv[i + 1];
    else if (!strcmp(argv[i], "--disk")) disk_path = argv[i + 1];
  }
  signal(SIGPIPE, SIG_IGN);
  char path[300];
  /* The port shows up when virtio_console has probed, which can trail /init by a moment. */
  int64_t deadline = now_ns() + 10000000000ll;
  while (find_port(port, path, sizeof path) != 0) {
    if (now_ns() > deadline) { fprintf(stderr, "dpa-workload: no virtio-serial port named %s\n", port); return 1; }
    usleep(20000);
  }
  chan_fd = open(path, O_RDWR | O_CLOEXEC);
  if (chan_fd < 0) { fprintf(stderr, "dpa-workload: open %s: %s\n", path, strerror(errno)); return 1; }

  sb_t b = {0};
  struct sysinfo si;
  sysinfo(&si);
  sb_printf(&b, "{\"event\":\"ready\",\"protocol\":%d,\"uptimeMs\":%.0f,\"pageBytes\":%u,\"memTotalBytes\":%" PRIu64
                ",\"cpus\":%ld,\"disk\":", PROTOCOL_VERSION, uptime_ms(), PAGE_BYTES, (uint64_t)si.totalram * si.mem_unit,
            sysconf(_SC_NPROCESSORS_ONLN));
  sb_json_string(&b, disk_path);
  sb_printf(&b, ",\"diskBytes\":%" PRIu64 ",\"port\":", disk_size_bytes());
  sb_json_string(&b, path);
  sb_printf(&b, "}");
  send_line(&b);
  fprintf(stderr, "dpa-workload: ready on %s\n", path);
  last_report_ns = now_ns();
  run_cmdline_commands(&b);

  char *line = malloc(MAX_LINE_BYTES + 1);
  size_t have = 0;
  bool overlong = false;
  for (;;) {
    int timeout_ms = -1;
    if (report_interval_ns > 0 && (mem.buf || disk.gen)) {
      int64_t due = last_report_ns + report_interval_ns - now_ns();
      timeout_ms = due <= 0 ? 0 : (int)((due + 999999) / 1000000);
    }
    struct pollfd pfd = { .fd = chan_fd, .events = POLLIN };
    int pr = poll(&pfd, 1, timeout_ms);
    if (pr < 0 && errno != EINTR) { perror("dpa-workload: poll"); return 1; }
    if (report_interval_ns > 0 && (mem.buf || disk.gen) && now_ns() >= last_report_ns + report_interval_ns) send_interval(&b);
    if (pr <= 0) continue;
    if (pfd.revents & POLLHUP && !(pfd.revents & POLLIN)) {
      /* host end closed: reads would return 0 at once; wait for it to come back */
      usleep(50000);
      continue;
    }
    ssize_t n = read(chan_fd, line + have, MAX_LINE_BYTES - have);
    if (n < 0) { if (errno == EINTR || errno == EAGAIN) continue; perror("dpa-workload: read"); return 1; }
    if (n == 0) { usleep(50000); continue; }
    have += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < have; i++) {
      if (line[i] != '\n') continue;
      line[i] = 0;
      if (overlong) { overlong = false; reply_err(&b, -1, "command line too long"); }
      else if (i > start) handle_line(&b, line + start);
      start = i + 1;
    }
    memmove(line, line + start, have - start);
    have -= start;
    if (have == MAX_LINE_BYTES) { overlong = true; have = 0; }
  }
}
