/* The host's limits, what a run needs of them, and the gate that keeps the
 * threads inside OpenBLAS within what the library was built for. A run
 * adds up its needs and checks them before it allocates or starts
 * anything large: a run too large for the host is refused with both
 * figures at once, instead of failing after minutes, or never (an
 * allocator that spins under ulimit -v). */
#define _GNU_SOURCE /* pthread_getattr_default_np */
#include <cblas.h>
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "emu/emu_impl.h"

/* ---- Reading the limits */

/* The number after key at the start of a line of path (/proc/meminfo,
 * /proc/self/status, a cgroup's memory.stat), or -1. */
static double limits_field(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    char line[256];
    size_t n = strlen(key);
    double v = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && sscanf(line + n, " %lf", &v) == 1) break;
    if (f) fclose(f);
    return v;
}

/* The one number of dir/file (a cgroup's memory.max, a sysctl): "max", and
 * 2^60 or more (cgroup v1's "no limit"), read as INFINITY; -1: absent. */
static double limits_value(const char *dir, const char *file)
{
    char path[1280], buf[64] = "";
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    bool got = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    if (!got) return -1;
    if (strncmp(buf, "max", 3) == 0) return INFINITY;
    char *end;
    double v = strtod(buf, &end);
    if (end == buf) return -1;
    return v >= 0x1p60 ? INFINITY : v;
}

/* Whether the comma-separated list has word. */
static bool limits_has(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, word, n) == 0 && (p[n] == ',' || p[n] == '\0')) return true;
    return false;
}

/* This process's cgroup directory holding file: of the v1 hierarchy of
 * controller, or of the unified (v2) one when controller is NULL; the
 * mount's root when the process's path is not visible there (a
 * container's namespace). false: neither holds file. */
static bool limits_cgroup_dir(const char *controller, const char *file, char *dir, size_t cap)
{
    char mnt[64], line[1024];
    snprintf(mnt, sizeof mnt, "/sys/fs/cgroup%s%s", controller ? "/" : "",
             controller ? controller : "");
    FILE *f = fopen("/proc/self/cgroup", "r");
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f)) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = '\0';
        char *path = c2 + 1;
        path[strcspn(path, "\n")] = '\0';
        bool mine = controller ? limits_has(c1 + 1, controller) : c1[1] == '\0';
        if (!mine || strcmp(path, "/") == 0) continue;
        snprintf(dir, cap, "%s%s", mnt, path);
        found = limits_value(dir, file) != -1;
    }
    if (f) fclose(f);
    if (!found) snprintf(dir, cap, "%s", mnt);
    return found || limits_value(dir, file) != -1;
}

/* limit (-1: absent) with used of it taken, into l when it leaves less. */
static void limits_set(emu_limit_t *l, double limit, double used, const char *name)
{
    if (limit < 0) return;
    double left = limit - (used > 0 ? used : 0);
    if (left < 0) left = 0;
    if (left < l->left) *l = (emu_limit_t){.left = left, .limit = limit, .name = name};
}

/* Memory: MemAvailable, or less under a cgroup's limit less its use
 * (page cache that can be dropped does not count as used). */
static void limits_memory(emu_limit_t *l)
{
    double kb = limits_field("/proc/meminfo", "MemAvailable:");
    double avail = kb >= 0 ? kb * 1024.0
                           : (double)sysconf(_SC_AVPHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    *l = (emu_limit_t){.left = avail, .limit = avail, .name = "MemAvailable in /proc/meminfo"};
    char dir[1024], stat[1100];
    if (limits_cgroup_dir(NULL, "memory.max", dir, sizeof dir)) {
        snprintf(stat, sizeof stat, "%s/memory.stat", dir);
        double cache = limits_field(stat, "inactive_file ");
        limits_set(l, limits_value(dir, "memory.max"),
                   limits_value(dir, "memory.current") - (cache > 0 ? cache : 0),
                   "the cgroup's memory.max");
    } else if (limits_cgroup_dir("memory", "memory.limit_in_bytes", dir, sizeof dir)) {
        snprintf(stat, sizeof stat, "%s/memory.stat", dir);
        double cache = limits_field(stat, "total_inactive_file ");
        limits_set(l, limits_value(dir, "memory.limit_in_bytes"),
                   limits_value(dir, "memory.usage_in_bytes") - (cache > 0 ? cache : 0),
                   "the cgroup's memory.limit_in_bytes");
    }
}

/* Threads of the whole system: the total of /proc/loadavg's "running/total". */
static double limits_system_threads(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double run, total = -1;
    if (f && fscanf(f, "%*f %*f %*f %lf/%lf", &run, &total) != 2) total = -1;
    if (f) fclose(f);
    return total;
}

/* Threads: RLIMIT_NPROC (which root escapes), threads-max and the
 * cgroup's pids.max. */
static void limits_threads(emu_limit_t *l)
{
    *l = (emu_limit_t){.left = INFINITY, .limit = INFINITY};
    struct rlimit r;
    double own = limits_field("/proc/self/status", "Threads:");
    if (getuid() != 0 && getrlimit(RLIMIT_NPROC, &r) == 0 && r.rlim_cur != RLIM_INFINITY)
        limits_set(l, (double)r.rlim_cur, own > 0 ? own : 1,
                   "the limit on processes and threads (RLIMIT_NPROC, ulimit -u)");
    double tmax = limits_value("/proc/sys/kernel", "threads-max");
    if (tmax > 0) limits_set(l, tmax, limits_system_threads(), "/proc/sys/kernel/threads-max");
    char dir[1024];
    if (limits_cgroup_dir(NULL, "pids.max", dir, sizeof dir) ||
        limits_cgroup_dir("pids", "pids.max", dir, sizeof dir))
        limits_set(l, limits_value(dir, "pids.max"), limits_value(dir, "pids.current"),
                   "the cgroup's pids.max");
}

/* Mappings of this process: the lines of /proc/self/maps. */
static double limits_own_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    double n = 0;
    for (int ch; f && (ch = getc(f)) != EOF;) n += ch == '\n';
    if (f) fclose(f);
    return n;
}

void emu_limits_read(emu_limits_t *out)
{
    limits_memory(&out->mem);
    out->as = (emu_limit_t){.left = INFINITY, .limit = INFINITY};
    struct rlimit r;
    if (getrlimit(RLIMIT_AS, &r) == 0 && r.rlim_cur != RLIM_INFINITY)
        limits_set(&out->as, (double)r.rlim_cur,
                   1024.0 * limits_field("/proc/self/status", "VmSize:"),
                   "the address-space limit (RLIMIT_AS, ulimit -v)");
    limits_threads(&out->threads);
    out->maps = (emu_limit_t){.left = INFINITY, .limit = INFINITY};
    double mmax = limits_value("/proc/sys/vm", "max_map_count");
    if (mmax > 0) limits_set(&out->maps, mmax, limits_own_maps(), "vm.max_map_count");
}

/* ---- The gate of BLAS callers */

/* OpenBLAS (without USE_TLS) keeps a table of 2 x MAX_THREADS buffers for
 * the whole process: each thread inside a call holds one, and a thread
 * more than the table holds overflows into code that crashes (0.3.21:
 * "precompiled NUM_THREADS exceeded", then SIGSEGV). Letting in
 * MAX_THREADS callers at once leaves the other half to OpenBLAS's own
 * worker threads and to threads outside the devices. The gate is the
 * process's, as the library's table is. */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static sem_t blas_sem;
static int blas_bound;
static atomic_int blas_inside, blas_most;

/* MAX_THREADS of the OpenBLAS build; the host's cores when it says none
 * (an OpenBLAS built here defaults to them). */
static int blas_library_bound(void)
{
    const char *cfg = openblas_get_config();
    const char *p = cfg ? strstr(cfg, "MAX_THREADS=") : NULL;
    long n = p ? strtol(p + strlen("MAX_THREADS="), NULL, 10) : 0;
    if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n < 1 << 20 ? (int)n : 1;
}

static void blas_init(void)
{
    int n = blas_library_bound();
    /* MOEMU_BLAS_CALLERS lowers it (never raises it): fewer buffers under
     * an address-space limit */
    const char *env = getenv("MOEMU_BLAS_CALLERS");
    char *end;
    long e = env ? strtol(env, &end, 10) : 0;
    if (env && *end == '\0' && e >= 1 && e < n) n = (int)e;
    blas_bound = n;
    sem_init(&blas_sem, 0, (unsigned)n);
}

int emu_blas_callers(void)
{
    pthread_once(&blas_once, blas_init);
    return blas_bound;
}

void emu_blas_enter(void)
{
    pthread_once(&blas_once, blas_init);
    while (sem_wait(&blas_sem) != 0 && errno == EINTR)
        ;
    int in = atomic_fetch_add(&blas_inside, 1) + 1;
    int most = atomic_load(&blas_most);
    while (in > most && !atomic_compare_exchange_weak(&blas_most, &most, in))
        ;
}

void emu_blas_leave(void)
{
    atomic_fetch_sub(&blas_inside, 1);
    sem_post(&blas_sem);
}

int emu_blas_most(void) { return atomic_load(&blas_most); }

const char *emu_blas_core_advice(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    const char *core = openblas_get_corename();
    if (getenv("OPENBLAS_CORETYPE") || !core || strcmp(core, "Prescott") != 0) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    if (__builtin_cpu_supports("avx")) return "SandyBridge";
#endif
    return NULL;
}

const char *emu_blas_core(void)
{
    const char *core = openblas_get_corename();
    return core ? core : "unknown";
}

void emu_host_prepare(char **argv)
{
    const char *core = emu_blas_core_advice();
    if (core && setenv("OPENBLAS_CORETYPE", core, 0) == 0) {
        execv("/proc/self/exe", argv);
        unsetenv("OPENBLAS_CORETYPE"); /* not executed: the report must not claim it */
    }
    /* Keep freed memory up to 256 MB and take blocks under 32 MB from the
     * heap: a run allocates and frees the same megabytes in every layer
     * (activations, a routing group's decisions, a collective's staging),
     * and glibc's defaults hand them back to the kernel each time, so that
     * every layer paid for system calls and for zeroed pages. */
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
}

/* ---- Needs */

/* What OpenBLAS maps for each caller's buffer: 32 << 22 bytes in Debian's
 * build (measured: the library does not say; its default is 32 << 20). */
#define EMU_BLAS_BUFFER (128.0 * 1024 * 1024)
/* What glibc reserves for each malloc arena (HEAP_MAX_SIZE on 64-bit):
 * a thread that allocates gets one of its own, up to 8 per core. */
#define EMU_ARENA (64.0 * 1024 * 1024)
/* What a device thread keeps resident besides its device: glibc's thread
 * descriptor and TLS, and the stack pages it touches (measured: about
 * 80 KB per device in all with the runner's schedule). */
#define EMU_THREAD_RESIDENT (64.0 * 1024)

void emu_need_add(emu_need_t *n, const char *what, double mem, double as)
{
    if (mem <= 0 && as <= 0) return;
    for (int i = 0; i < n->n; i++)
        if (strcmp(n->part[i].what, what) == 0) {
            n->part[i].mem += mem;
            n->part[i].as += as;
            return;
        }
    if (n->n < EMU_NEED_PARTS) n->part[n->n++] = (emu_need_part_t){what, mem, as};
}

/* glibc's default for a new thread: RLIMIT_STACK's, or 8 MiB; *guard its
 * guard page. */
static size_t emu_stack_default(size_t *guard)
{
    pthread_attr_t a;
    size_t s = 8 << 20;
    *guard = 4096;
    if (pthread_getattr_default_np(&a) == 0) {
        pthread_attr_getstacksize(&a, &s);
        pthread_attr_getguardsize(&a, guard);
        pthread_attr_destroy(&a);
    }
    return s;
}

size_t emu_stack_size(void)
{
    size_t guard;
    return emu_stack_default(&guard);
}

/* Bytes of a new thread's stack and its guard page (a device's coroutine
 * takes the same). */
static double emu_stack_bytes(void)
{
    size_t guard, s = emu_stack_default(&guard);
    return (double)s + (double)guard;
}

/* Arenas that ndev more allocating threads may add: MALLOC_ARENA_MAX or
 * glibc's 8 per core. */
static double emu_arenas(int ndev)
{
    const char *env = getenv("MALLOC_ARENA_MAX");
    long most = env ? strtol(env, NULL, 10) : 0;
    if (most <= 0) most = 8 * sysconf(_SC_NPROCESSORS_ONLN);
    return ndev < most ? ndev : (double)most;
}

void emu_need_devices(emu_need_t *n, int ndev, double blas_resident)
{
    double arenas = emu_arenas(ndev);
    n->threads += ndev;
    /* a stack and its guard are two mappings, an arena two */
    n->maps += 2.0 * ndev + 2.0 * arenas;
    emu_need_add(n, "device threads",
                 ndev * ((double)sizeof(emu_dev_t) + EMU_THREAD_RESIDENT),
                 ndev * ((double)sizeof(emu_dev_t) + emu_stack_bytes()) + arenas * EMU_ARENA);
    if (blas_resident < 0) return;
    int callers = emu_blas_callers() < ndev ? emu_blas_callers() : ndev;
    n->maps += callers;
    emu_need_add(n, "BLAS buffers", callers * fmin(blas_resident, EMU_BLAS_BUFFER),
                 callers * EMU_BLAS_BUFFER);
}

/* " (weights 1.20 GB, ...)" of the parts' mem (or as) in buf. */
static const char *emu_need_parts(const emu_need_t *n, bool as, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n->n && len < cap; i++) {
        double v = as ? n->part[i].as : n->part[i].mem;
        char b[32];
        if (v > 0)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s %s", len ? ", " : " (",
                                    n->part[i].what, emu_fmt_bytes(v, b));
    }
    if (len && len < cap) snprintf(buf + len, cap - len, ")");
    return buf;
}

static moemu_status_t emu_need_bytes(const emu_need_t *n, const emu_limit_t *l, bool as,
                                     const char *what)
{
    double tot = 0;
    for (int i = 0; i < n->n; i++) tot += as ? n->part[i].as : n->part[i].mem;
    if (tot <= l->left) return MOEMU_OK;
    char parts[512];
    emu_need_parts(n, as, parts, sizeof parts);
    const char *hint = n->hint ? n->hint : "";
    char of[48] = "";
    if (l->limit != l->left) snprintf(of, sizeof of, " of %.2f GB", l->limit / 1e9);
    if (!as)
        return moemu_fail(MOEMU_ERR_NOMEM, "%s needs %.2f GB of host memory%s, but only %.2f GB "
                          "are available (%s%s)%s", what, tot / 1e9, parts, l->left / 1e9,
                          l->name, of, hint);
    return moemu_fail(MOEMU_ERR_NOMEM, "%s needs %.2f GB of address space%s, but %s of %.2f GB "
                      "leaves %.2f GB%s", what, tot / 1e9, parts, l->name, l->limit / 1e9,
                      l->left / 1e9, hint);
}

static moemu_status_t emu_need_count(double need, const emu_limit_t *l, const char *noun,
                                     const char *what)
{
    if (need <= l->left) return MOEMU_OK;
    return moemu_fail(MOEMU_ERR_NOMEM, "%s needs %.0f %s, but %s of %.0f leaves %.0f", what,
                      need, noun, l->name, l->limit, l->left);
}

moemu_status_t emu_need_check(const emu_need_t *n, const emu_limits_t *limits, const char *what)
{
    emu_limits_t now;
    if (!limits) emu_limits_read(&now);
    const emu_limits_t *l = limits ? limits : &now;
    MOEMU_CHECK(emu_need_count(n->threads, &l->threads, "threads (one per device)", what));
    MOEMU_CHECK(emu_need_count(n->maps, &l->maps,
                               "memory mappings (a thread's stack and its guard page are two)",
                               what));
    MOEMU_CHECK(emu_need_bytes(n, &l->mem, false, what));
    return emu_need_bytes(n, &l->as, true, what);
}
