/* A cluster of virtual devices: one thread per device, pinned over the
 * host cores that hwloc finds, or, for a run that moves no data, one
 * coroutine per device on the calling thread (fiber.c); the first failure
 * aborts the run and wakes every waiter so that nothing hangs. */
#include <cblas.h>
#include <errno.h>
#include <hwloc.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "emu/emu_impl.h"

static void emu_now(struct timespec *ts) { clock_gettime(CLOCK_MONOTONIC, ts); }

_Thread_local emu_dev_t *emu_self;

/* SplitMix64 (Steele, Lea, Flood 2014): the jitter's generator. */
static uint64_t emu_splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Cores usable by this process; hwloc's topology restricts itself to the
 * allowed cpuset by default. */
static int emu_hwloc_cores(hwloc_topology_t topo)
{
    int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    if (n <= 0) n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
    return n;
}

/* The host's topology and cores, loaded once per process and kept: a
 * sweep creates a cluster per candidate, and loading the topology (hwloc
 * opens its plugins) cost as much as a small dry run. Consulting it from
 * several threads is safe (hwloc's rule for a topology left unmodified). */
static pthread_once_t host_once = PTHREAD_ONCE_INIT;
static hwloc_topology_t host_topo;
static int host_cores;

static void host_load(void)
{
    hwloc_topology_t ht;
    if (hwloc_topology_init(&ht) == 0) {
        if (hwloc_topology_load(ht) == 0) host_topo = ht;
        else hwloc_topology_destroy(ht);
    }
    host_cores = host_topo ? emu_hwloc_cores(host_topo) : 0;
    if (host_cores <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        host_cores = n > 0 ? (int)n : 1;
    }
}

moemu_status_t emu_cluster_create(const emu_spec_t *spec,
                                  const emu_topo_t *topo, int ndev,
                                  const emu_cluster_opts_t *opts,
                                  emu_cluster_t **out)
{
    *out = NULL;
    MOEMU_CHECK(emu_spec_check(spec, "cluster"));
    MOEMU_CHECK(emu_topo_check(topo, "cluster"));
    emu_cluster_opts_t o = opts ? *opts : (emu_cluster_opts_t){0};
    if (ndev < 1)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "a cluster needs at least one device (got %d)", ndev);
    if (!(o.pace >= 0 && o.pace <= EMU_PACE_MAX))
        return moemu_fail(MOEMU_ERR_INVALID, "pace must be in [0, %g] (got %g)",
                          EMU_PACE_MAX, o.pace);
    /* MOEMU_DRY_THREADS=1: threads for a no-data run too (comparisons) */
    const char *env = getenv("MOEMU_DRY_THREADS");
    if (env && *env && strcmp(env, "0") != 0) o.threads = true;
    if (o.local0 == 0 && o.local1 == 0) o.local1 = ndev;
    if (o.local0 < 0 || o.local0 > o.local1 || o.local1 > ndev)
        return moemu_fail(MOEMU_ERR_INVALID, "local devices [%d, %d) are not devices of a "
                          "cluster of %d", o.local0, o.local1, ndev);
    emu_topo_t t = *topo;
    MOEMU_CHECK(emu_topo_nodes(topo, ndev, &t.nodes));
    int nlocal = o.local1 - o.local0;
    /* threads before devices: a cluster the host cannot start is refused
     * before anything is allocated (a stack and its guard: two mappings) */
    emu_need_t need = {.threads = nlocal, .maps = 2.0 * nlocal};
    char what[64];
    snprintf(what, sizeof what, "a cluster of %d devices (a thread each)", nlocal);
    MOEMU_CHECK(emu_need_check(&need, NULL, what));

    emu_cluster_t *c = calloc(1, sizeof *c);
    emu_dev_t *devs = c ? calloc((size_t)ndev, sizeof *devs) : NULL;
    if (!devs) {
        free(c);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate a cluster of %d "
                                           "devices", ndev);
    }
    c->spec = *spec;
    c->topo = t;
    c->opts = o;
    c->ndev = ndev;
    c->devs = devs;
    c->fail_rank = -1;
    atomic_init(&c->aborting, false);
    for (int d = 0; d < ndev; d++) {
        emu_dev_t *dev = &devs[d];
        emu_dev_init(dev, spec, d, o.no_limit);
        dev->trace = o.trace;
        dev->nodata = o.nodata;
        dev->cluster = c;
        dev->topo = t;
        dev->node = d / t.devices_per_node;
        dev->local_rank = d % t.devices_per_node;
        dev->jitter_us = o.jitter_us;
        uint64_t seed = o.jitter_seed ^ (0xD1B54A32D192ED03ULL * (uint64_t)(d + 1));
        dev->jitter_state = emu_splitmix(&seed);
    }

    pthread_once(&host_once, host_load);
    c->hwloc = host_topo;
    c->host_cores = host_cores;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->pace_cv, &ca);
    pthread_condattr_destroy(&ca);
    *out = c;
    return MOEMU_OK;
}

void emu_cluster_destroy(emu_cluster_t *c)
{
    if (!c) return;
    /* a sync that outlives its cluster (a communicator destroyed late)
     * must not touch it */
    for (emu_sync_t *s = c->syncs; s; s = s->next) s->cluster = NULL;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->pace_cv);
    emu_fibers_free(c);
    emu_a2a_memos_free(c);
    for (int d = 0; d < c->ndev; d++) emu_dev_fini(&c->devs[d]);
    free(c->devs);
    free(c);
}

int emu_cluster_size(const emu_cluster_t *c) { return c->ndev; }

const emu_topo_t *emu_cluster_topo(const emu_cluster_t *c) { return &c->topo; }

emu_dev_t *emu_cluster_dev(emu_cluster_t *c, int rank)
{
    return rank >= 0 && rank < c->ndev ? &c->devs[rank] : NULL;
}

int emu_cluster_host_cores(const emu_cluster_t *c) { return c->host_cores; }

void emu_cluster_local(const emu_cluster_t *c, int *lo, int *hi)
{
    *lo = c->opts.local0;
    *hi = c->opts.local1;
}

int emu_cluster_failure(const emu_cluster_t *c, bool *peer)
{
    int f = c->fail_rank;
    *peer = f >= 0 && c->devs[f].status == MOEMU_ERR_PEER;
    return f;
}

bool emu_cluster_aborting(const emu_cluster_t *c)
{
    return atomic_load(&((emu_cluster_t *)c)->aborting);
}

/* ---- syncs */

moemu_status_t emu_sync_create(emu_cluster_t *c, void (*reset)(void *),
                               void *arg, emu_sync_t **out)
{
    emu_sync_t *s = calloc(1, sizeof *s);
    if (!s) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate a sync");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->cluster = c;
    s->reset = reset;
    s->arg = arg;
    pthread_mutex_lock(&c->mu);
    s->next = c->syncs;
    c->syncs = s;
    pthread_mutex_unlock(&c->mu);
    *out = s;
    return MOEMU_OK;
}

void emu_sync_destroy(emu_sync_t *s)
{
    if (!s) return;
    emu_cluster_t *c = s->cluster;
    if (c) {
        pthread_mutex_lock(&c->mu);
        for (emu_sync_t **p = &c->syncs; *p; p = &(*p)->next)
            if (*p == s) {
                *p = s->next;
                break;
            }
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

/* In a coroutine run (emu_sched_self) only one device runs at a time and
 * it gives the thread up only in emu_sync_wait: the mutex has nothing to
 * exclude, and waits and wake-ups go through the scheduler. */
void emu_sync_lock(emu_sync_t *s)
{
    /* every collective, send and receive enters here: jitter before */
    if (emu_self && emu_self->jitter_us) emu_dev_jitter(emu_self);
    if (!emu_sched_self) pthread_mutex_lock(&s->mu);
}

void emu_sync_unlock(emu_sync_t *s)
{
    if (!emu_sched_self) pthread_mutex_unlock(&s->mu);
}

void emu_sync_broadcast(emu_sync_t *s)
{
    if (emu_sched_self) emu_fiber_wake(s);
    else pthread_cond_broadcast(&s->cv);
}

void emu_sync_wait(emu_sync_t *s)
{
    if (emu_sched_self) emu_fiber_wait(s);
    else pthread_cond_wait(&s->cv, &s->mu);
}

/* With c->mu held: wake every waiter of every sync so it looks again at
 * the abort flag and at which devices are done. */
static void emu_wake_all(emu_cluster_t *c)
{
    if (emu_sched_self) {
        for (emu_sync_t *s = c->syncs; s; s = s->next) emu_fiber_wake(s);
        return;
    }
    for (emu_sync_t *s = c->syncs; s; s = s->next) {
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
    pthread_cond_broadcast(&c->pace_cv);
}

/* With c->mu held: whether device d's failure is the one to report
 * rather than f's (-1: none yet). A device's own failure goes before a
 * peer's "stopped", then the lower rank: the report must not depend on
 * which thread failed first. */
static bool emu_fail_reported(const emu_cluster_t *c, int d, int f)
{
    if (f < 0) return true;
    bool dpeer = c->devs[d].status == MOEMU_ERR_PEER;
    bool fpeer = c->devs[f].status == MOEMU_ERR_PEER;
    return dpeer != fpeer ? fpeer : d < f;
}

/* Record device d's failure (its status set); the first one aborts the
 * run. */
static void emu_cluster_fail(emu_cluster_t *c, int d)
{
    pthread_mutex_lock(&c->mu);
    bool first = !atomic_exchange(&c->aborting, true);
    if (emu_fail_reported(c, d, c->fail_rank)) c->fail_rank = d;
    emu_wake_all(c);
    pthread_mutex_unlock(&c->mu);
    if (first && c->opts.on_abort) c->opts.on_abort(c->opts.abort_arg);
}

void emu_cluster_abort(emu_cluster_t *c)
{
    pthread_mutex_lock(&c->mu);
    bool first = !atomic_exchange(&c->aborting, true);
    emu_wake_all(c);
    pthread_mutex_unlock(&c->mu);
    if (first && c->opts.on_abort) c->opts.on_abort(c->opts.abort_arg);
}

/* ---- pacing */

void emu_dev_pace(emu_dev_t *dev)
{
    emu_cluster_t *c = dev->cluster;
    if (!c || c->opts.pace <= 0) return;
    double wall = c->opts.pace * (dev->clock - dev->run_clock0);
    struct timespec until = c->run_start;
    double whole = floor(wall);
    until.tv_sec += (time_t)whole;
    until.tv_nsec += (long)((wall - whole) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    struct timespec now;
    emu_now(&now);
    if (now.tv_sec > until.tv_sec ||
        (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
        return;
    pthread_mutex_lock(&c->mu);
    while (!atomic_load(&c->aborting) &&
           pthread_cond_timedwait(&c->pace_cv, &c->mu, &until) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&c->mu);
}

/* ---- jitter */

void emu_dev_jitter(emu_dev_t *dev)
{
    if (!dev->jitter_us || (dev->cluster && atomic_load(&dev->cluster->aborting))) return;
    uint64_t us = emu_splitmix(&dev->jitter_state) % ((uint64_t)dev->jitter_us + 1);
    if (!us) return;
    /* coroutines: the turns change instead, which is what jitter is for */
    if (emu_sched_self) {
        emu_fiber_yield();
        return;
    }
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- runs */

void emu_dev_run(emu_cluster_t *c, emu_dev_t *dev, emu_dev_fn fn, void *arg)
{
    moemu_errclear();
    emu_self = dev;
    moemu_status_t st = fn(dev, arg);
    emu_self = NULL;
    /* a run ends when its communication has: the clock includes it */
    emu_dev_comm_wait(dev);
    emu_dev_set_async(dev, false);
    if (st != MOEMU_OK) {
        const char *m = moemu_errmsg();
        snprintf(dev->errmsg, sizeof dev->errmsg, "%s",
                 m[0] ? m : moemu_strerror(st));
        dev->status = st;
        emu_cluster_fail(c, dev->rank);
    }
    atomic_store_explicit(&dev->done, true, memory_order_release);
    /* waiters on this device must learn that it will not come */
    pthread_mutex_lock(&c->mu);
    emu_wake_all(c);
    pthread_mutex_unlock(&c->mu);
}

typedef struct {
    emu_cluster_t *c;
    emu_dev_t *dev;
    emu_dev_fn fn;
    void *arg;
    hwloc_bitmap_t cpus; /* NULL: unpinned */
} emu_thread_arg_t;

static void *emu_dev_thread(void *p)
{
    emu_thread_arg_t *a = p;
    /* a failed pin only costs speed */
    if (a->cpus) hwloc_set_cpubind(a->c->hwloc, a->cpus, HWLOC_CPUBIND_THREAD);
    emu_dev_run(a->c, a->dev, a->fn, a->arg);
    return NULL;
}

/* Device d's cores: a share of them when devices are fewer than cores,
 * else one core, round robin. */
static hwloc_bitmap_t emu_dev_cpus(emu_cluster_t *c, int d)
{
    if (!c->hwloc || c->opts.no_pin) return NULL;
    hwloc_obj_type_t type =
        hwloc_get_nbobjs_by_type(c->hwloc, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE
                                                               : HWLOC_OBJ_PU;
    int cores = c->host_cores, n = c->opts.local1 - c->opts.local0;
    d -= c->opts.local0;
    int share = n < cores ? cores / n : 1;
    int first = n < cores ? d * share : d % cores;
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set) return NULL;
    for (int i = first; i < first + share; i++) {
        hwloc_obj_t o = hwloc_get_obj_by_type(c->hwloc, type, (unsigned)i);
        if (o && o->cpuset) hwloc_bitmap_or(set, set, o->cpuset);
    }
    if (hwloc_bitmap_iszero(set)) {
        hwloc_bitmap_free(set);
        return NULL;
    }
    return set;
}

/* Start one thread per device of this process, pinned, and join them.
 * OpenBLAS shares the cores meanwhile. */
static moemu_status_t emu_threads_run(emu_cluster_t *c, emu_dev_fn fn, void *arg)
{
    int lo = c->opts.local0, n = c->opts.local1 - lo;
    emu_thread_arg_t *ta = calloc((size_t)n + 1, sizeof *ta);
    if (!ta) return moemu_fail(MOEMU_ERR_NOMEM, "cannot start %d device threads", n);
    for (int d = 0; d < n; d++)
        ta[d] = (emu_thread_arg_t){c, &c->devs[lo + d], fn, arg, emu_dev_cpus(c, lo + d)};

    /* BLAS threads: the devices share the cores, never more threads than
     * cores, and never more than the process had asked for. Counted over
     * all the cluster's devices, wherever they run: OpenBLAS's sums
     * depend on its thread count, and a run spread over processes on
     * this host must give the bits of the one-process run. */
    int blas_prev = openblas_get_num_threads();
    int blas = c->host_cores / c->ndev;
    if (blas < 1) blas = 1;
    if (blas > blas_prev) blas = blas_prev;
    if (blas != blas_prev) openblas_set_num_threads(blas);

    int started = 0;
    for (; started < n; started++) {
        int e = pthread_create(&c->devs[lo + started].thread, NULL, emu_dev_thread,
                               &ta[started]);
        if (e != 0) {
            emu_dev_t *dev = &c->devs[lo + started];
            snprintf(dev->errmsg, sizeof dev->errmsg,
                     "cannot start its thread: %s", strerror(e));
            dev->status = MOEMU_ERR_NOMEM;
            atomic_store(&dev->done, true);
            emu_cluster_fail(c, lo + started);
            break;
        }
    }
    for (int d = 0; d < started; d++) pthread_join(c->devs[lo + d].thread, NULL);
    /* devices that never started never come */
    for (int d = started; d < n; d++) atomic_store(&c->devs[lo + d].done, true);

    if (blas != blas_prev) openblas_set_num_threads(blas_prev);
    for (int d = 0; d < n; d++)
        if (ta[d].cpus) hwloc_bitmap_free(ta[d].cpus);
    free(ta);
    return MOEMU_OK;
}

/* Whether c's devices run as coroutines: when the run moves no data
 * (every device in no-data mode), its devices only compute costs and
 * meet, and turns on one thread beat threads meeting in the kernel.
 * Paced runs keep threads, whose sleeps are the point; opts.threads (or
 * MOEMU_DRY_THREADS) asks for them. */
static bool emu_cluster_fibers(const emu_cluster_t *c)
{
    /* a run shared with other processes waits on MPI: threads */
    if (c->opts.threads || c->opts.pace > 0 || c->opts.local0 != 0 ||
        c->opts.local1 != c->ndev)
        return false;
    for (int d = 0; d < c->ndev; d++)
        if (!c->devs[d].nodata) return false;
    return true;
}

/* Before a run, no device running yet: plain writes are safe. */
static void emu_run_reset(emu_cluster_t *c)
{
    atomic_store(&c->aborting, false);
    c->fail_rank = -1;
    emu_now(&c->run_start);
    for (emu_sync_t *s = c->syncs; s; s = s->next)
        if (s->reset) s->reset(s->arg);
    for (int d = 0; d < c->ndev; d++) {
        emu_dev_t *dev = &c->devs[d];
        /* a device of another process is never waited for here */
        atomic_store(&dev->done, d < c->opts.local0 || d >= c->opts.local1);
        dev->status = MOEMU_OK;
        dev->errmsg[0] = '\0';
        dev->run_clock0 = dev->clock;
    }
}

/* dev's failure as the run's, "device N: " put before a message that
 * does not begin by naming device N already. */
static moemu_status_t emu_report_failure(const emu_dev_t *dev)
{
    char own[32];
    size_t n = (size_t)snprintf(own, sizeof own, "device %d", dev->rank);
    const char *m = dev->errmsg;
    if (strncmp(m, own, n) == 0 && (m[n] == ' ' || m[n] == ':'))
        return moemu_fail(dev->status, "%s", m);
    return moemu_fail(dev->status, "%s: %s", own, m);
}

moemu_status_t emu_cluster_run(emu_cluster_t *c, emu_dev_fn fn, void *arg)
{
    pthread_mutex_lock(&c->mu);
    bool busy = c->running;
    c->running = true;
    pthread_mutex_unlock(&c->mu);
    if (busy)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "this cluster is already running");

    emu_run_reset(c);
    moemu_status_t st = emu_cluster_fibers(c) ? emu_fibers_run(c, fn, arg)
                                              : emu_threads_run(c, fn, arg);
    pthread_mutex_lock(&c->mu);
    c->running = false;
    int f = c->fail_rank;
    pthread_mutex_unlock(&c->mu);
    /* a deadlock goes before the releases it caused */
    if (st != MOEMU_OK) return st;
    return f < 0 ? MOEMU_OK : emu_report_failure(&c->devs[f]);
}
