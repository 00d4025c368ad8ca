/* Devices as coroutines: a run that moves no data takes its devices in
 * turns on the calling thread instead of one thread each. (At the end, a
 * device's lanes: coroutines of one device, emu.h "Lanes".)
 *
 * Why: a dry run's devices do little but meet in collectives. As threads,
 * every meeting is a trip through the kernel (a futex wait per member, a
 * wake-up per waiter, the scheduler between them): 0.7 s of user and 1.3 s
 * of system time for a 16-device dry run that computes for a fraction of
 * that. As coroutines a meeting costs a switch of stacks in user space.
 *
 * How: a device gives the thread up only where a thread would sleep, in
 * emu_sync_wait (and where jitter would sleep: emu_fiber_yield), so the
 * code above the syncs (the transports, the collectives' checks and
 * charges, the runner) runs unchanged. The next device to run is the
 * first of a FIFO of runnable ones, and waiters are woken in the order
 * they came, so a run takes the same turns every time. When none is
 * runnable and some are not done, no broadcast can ever come: that is a
 * deadlock (a thread would hang), reported naming the devices. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "emu/emu_impl.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define EMU_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(EMU_ASAN)
#define EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(EMU_TSAN)
#define EMU_TSAN 1
#endif
#ifdef EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef EMU_TSAN
#include <sanitizer/tsan_interface.h>
#endif

/* x86-64 switches with the few instructions below; elsewhere (or with
 * -DEMU_FIBER_UCONTEXT) with swapcontext, which also saves the signal
 * mask: a system call per switch, 350 ns against 5 on the reference
 * machine, and a dry run switches hundreds of thousands of times. */
#if !defined(__x86_64__) && !defined(EMU_FIBER_UCONTEXT)
#define EMU_FIBER_UCONTEXT 1
#endif
#ifdef EMU_FIBER_UCONTEXT
#include <ucontext.h>
#endif

struct emu_fiber {
#ifdef EMU_FIBER_UCONTEXT
    ucontext_t uc;
#else
    void *sp; /* where the stack was left at the last switch */
#endif
    emu_dev_t *dev;    /* NULL: the thread's own stack, the scheduler's */
    emu_fiber_t *next; /* in the run queue or in a sync's waiters */
    bool done;
    void *map;         /* the stack's mapping: a guard page, then the stack */
    char *stack;       /* its usable part: stack_len bytes above the guard */
    size_t map_len, stack_len;
    void *asan_fake;   /* ASan's fake stack while switched out */
    void *tsan;        /* TSan's fiber */
    char err[EMU_ERRMSG_MAX]; /* its moemu_errmsg() */
};

struct emu_sched {
    emu_cluster_t *c;
    emu_dev_fn fn;
    void *arg;
    emu_fiber_t main;         /* the calling thread */
    emu_fiber_t *cur, *from;  /* running; the one that switched to it */
    emu_fiber_t *head, *tail; /* runnable, in turn */
    int ndone;
    char msg[512];            /* the deadlock, "" if none */
};

_Thread_local emu_sched_t *emu_sched_self;

/* A device's lanes (emu.h, "Lanes"; below) */
struct emu_lanes {
    emu_sched_t own;                /* the thread's, when no scheduler runs */
    emu_sched_t *k;                 /* own or the run's */
    emu_fiber_t *caller;            /* who called emu_dev_lanes */
    emu_fiber_t fib[EMU_LANES_MAX]; /* stacks mapped once, kept */
    int layer[EMU_LANES_MAX];       /* the device's layer tag, per lane */
    moemu_status_t st[EMU_LANES_MAX];
    int n, cur;
    bool active;
    emu_lane_fn fn;
    void *const *args;
};

/* ---- switching */

#ifndef EMU_FIBER_UCONTEXT
/* emu_fiber_jump(&from->sp, to->sp): push the registers the ABI has the
 * callee keep, leave the stack pointer in *from, take up to's stack and
 * pop its registers; `ret` returns into to's emu_fiber_jump call (or, the
 * first time, into emu_fiber_entry). MXCSR and the x87 control word are
 * not saved: moemu never changes them, so every device has the same. */
__attribute__((visibility("hidden"))) void emu_fiber_jump(void **from, void *to);
__asm__(".text\n"
        ".p2align 4\n"
        ".globl emu_fiber_jump\n"
        ".hidden emu_fiber_jump\n"
        ".type emu_fiber_jump, @function\n"
        "emu_fiber_jump:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size emu_fiber_jump, .-emu_fiber_jump\n");
#endif

/* The sanitizers' half of a switch, before it: ASan must know the stack
 * it lands on (a fiber that is done passes no fake stack: it is freed),
 * TSan must see the order of the devices' turns as synchronisation. */
static void emu_fiber_leaving(emu_fiber_t *from, emu_fiber_t *to)
{
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(from->done ? NULL : &from->asan_fake, to->stack,
                                   to->stack_len);
#endif
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(to->tsan, 0);
#endif
    (void)from, (void)to;
}

/* ... and after it, on the stack of k->cur. The first switch from the
 * thread tells ASan where the thread's own stack is, for the way back. */
static void emu_fiber_arrived(emu_sched_t *k)
{
#ifdef EMU_ASAN
    const void *lo;
    size_t len;
    __sanitizer_finish_switch_fiber(k->cur->asan_fake, &lo, &len);
    if (k->from == &k->main) {
        k->main.stack = (char *)lo;
        k->main.stack_len = len;
    }
#endif
    (void)k;
}

/* Give the thread from from to to; returns when from's turn comes again.
 * The running device's errors go to its own message buffer, and jitter
 * and the syncs find it in emu_self. */
static void emu_fiber_switch(emu_sched_t *k, emu_fiber_t *from, emu_fiber_t *to)
{
    if (from == to) return;
    k->from = from;
    k->cur = to;
    emu_self = to->dev;
    emu_err_redirect(to->dev ? to->err : NULL);
    emu_fiber_leaving(from, to);
#ifdef EMU_FIBER_UCONTEXT
    swapcontext(&from->uc, &to->uc);
#else
    emu_fiber_jump(&from->sp, to->sp);
#endif
    emu_fiber_arrived(k);
}

/* The first runnable fiber, or the scheduler when there is none. */
static emu_fiber_t *emu_sched_next(emu_sched_t *k)
{
    emu_fiber_t *f = k->head;
    if (!f) return &k->main;
    k->head = f->next;
    if (!k->head) k->tail = NULL;
    f->next = NULL;
    return f;
}

static void emu_sched_push(emu_sched_t *k, emu_fiber_t *f)
{
    f->next = NULL;
    if (k->tail) k->tail->next = f;
    else k->head = f;
    k->tail = f;
}

/* Where every fiber starts: its device's function, then the end of its
 * turn for good. The stack stays mapped until the cluster goes. */
static void emu_fiber_entry(void)
{
    emu_sched_t *k = emu_sched_self;
    emu_fiber_t *f = k->cur;
    emu_fiber_arrived(k);
    emu_dev_run(k->c, f->dev, k->fn, k->arg);
    f->done = true;
    k->ndone++;
    emu_fiber_switch(k, f, emu_sched_next(k));
    abort(); /* a fiber that is done is never switched to */
}

/* ---- stacks */

/* f's stack: as large as a thread's (the device functions keep arrays on
 * it, as they do in threads), a guard page below it, mapped without swap
 * reserved: only the pages a device touches take memory. */
static moemu_status_t emu_fiber_map(emu_fiber_t *f, int rank)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (emu_stack_size() + page - 1) / page * page;
    void *m = mmap(NULL, len + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED || mprotect(m, page, PROT_NONE) != 0) {
        if (m != MAP_FAILED) munmap(m, len + page);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot map a stack of %zu bytes for device %d",
                          len, rank);
    }
    f->map = m;
    f->map_len = len + page;
    f->stack = (char *)m + page;
    f->stack_len = len;
    return MOEMU_OK;
}

/* f ready to start at entry on its stack. */
static void emu_fiber_prepare(emu_fiber_t *f, void (*entry)(void))
{
#ifdef EMU_ASAN
    /* a previous run's fiber never returned from its entry: its frames'
     * red zones are still poisoned */
    __asan_unpoison_memory_region(f->stack, f->stack_len);
#endif
#ifdef EMU_FIBER_UCONTEXT
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = f->stack_len;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, entry, 0);
#else
    /* what emu_fiber_jump pops: six registers, then the address `ret`
     * goes to; above it a return address entry never uses,
     * which leaves the stack aligned as after a call */
    void **sp = (void **)(((uintptr_t)f->stack + f->stack_len) & ~(uintptr_t)15);
    *--sp = NULL;
    *--sp = (void *)(uintptr_t)entry;
    for (int i = 0; i < 6; i++) *--sp = NULL;
    f->sp = sp;
#endif
}

/* The cluster's fibers, their stacks mapped on the first run that needs
 * them and kept for the next runs (prefill, then decode). */
static moemu_status_t emu_fibers_get(emu_cluster_t *c)
{
    if (c->fibers) return MOEMU_OK;
    emu_fiber_t *fs = calloc((size_t)c->ndev, sizeof *fs);
    if (!fs) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d coroutines", c->ndev);
    c->fibers = fs;
    for (int d = 0; d < c->ndev; d++) {
        fs[d].dev = &c->devs[d];
        moemu_status_t st = emu_fiber_map(&fs[d], d);
        if (st != MOEMU_OK) { /* none kept half made: the next run tries anew */
            emu_fibers_free(c);
            return st;
        }
    }
    return MOEMU_OK;
}

void emu_fibers_free(emu_cluster_t *c)
{
    for (int d = 0; c->fibers && d < c->ndev; d++)
        if (c->fibers[d].map) munmap(c->fibers[d].map, c->fibers[d].map_len);
    free(c->fibers);
    c->fibers = NULL;
}

/* ---- waiting */

void emu_fiber_wait(emu_sync_t *s)
{
    emu_sched_t *k = emu_sched_self;
    emu_fiber_t *f = k->cur;
    f->next = NULL;
    if (s->fw_tail) s->fw_tail->next = f;
    else s->fw_head = f;
    s->fw_tail = f;
    emu_fiber_switch(k, f, emu_sched_next(k));
}

void emu_fiber_wake(emu_sync_t *s)
{
    emu_fiber_t *f = s->fw_head;
    if (!f) return;
    emu_sched_t *k = emu_sched_self;
    if (k->tail) k->tail->next = f;
    else k->head = f;
    k->tail = s->fw_tail;
    s->fw_head = s->fw_tail = NULL;
}

void emu_fiber_yield(void)
{
    emu_sched_t *k = emu_sched_self;
    emu_fiber_t *f = k->cur;
    emu_sched_push(k, f);
    emu_fiber_switch(k, f, emu_sched_next(k));
}

/* ---- the run */

/* Nothing runnable, some devices not done: each waits for a broadcast
 * that only a running device could make. The message names them (the
 * first 16); then the run aborts, which releases every wait that can
 * give up (all but a collective's second meeting, which no deadlock can
 * involve: every member that gathered reaches it). */
static void emu_sched_deadlock(emu_sched_t *k)
{
    emu_cluster_t *c = k->c;
    char list[256], more[32] = "";
    size_t len = 0;
    int n = 0;
    for (int d = 0; d < c->ndev; d++) {
        if (c->fibers[d].done) continue;
        if (n < 16) len += (size_t)snprintf(list + len, sizeof list - len, "%s%d", n ? ", " : "", d);
        n++;
    }
    if (n > 16) snprintf(more, sizeof more, " and %d more", n - 16);
    snprintf(k->msg, sizeof k->msg, "deadlock: device%s %s%s %s for a collective or a "
             "message that no running device will complete", n > 1 ? "s" : "", list, more,
             n > 1 ? "wait" : "waits");
    atomic_store(&c->aborting, true);
    for (emu_sync_t *s = c->syncs; s; s = s->next) emu_fiber_wake(s);
}

/* Turns until every fiber is done, or none can run again. */
static void emu_sched_loop(emu_sched_t *k)
{
    for (bool released = false;;) {
        if (k->head) {
            emu_fiber_switch(k, &k->main, emu_sched_next(k));
            continue;
        }
        if (k->ndone == k->c->ndev || released) return;
        emu_sched_deadlock(k);
        released = true;
    }
}

/* The fibers of a run: each prepared, runnable in rank order. */
static void emu_sched_start(emu_sched_t *k)
{
    emu_cluster_t *c = k->c;
#ifdef EMU_TSAN
    k->main.tsan = __tsan_get_current_fiber();
#endif
    for (int d = 0; d < c->ndev; d++) {
        emu_fiber_t *f = &c->fibers[d];
        f->done = false;
        f->asan_fake = NULL;
#ifdef EMU_TSAN
        f->tsan = __tsan_create_fiber(0);
#endif
        emu_fiber_prepare(f, emu_fiber_entry);
        emu_sched_push(k, f);
    }
}

/* After the loop: a fiber left waiting (only after a deadlock whose
 * release could not free it) never runs again; its device is done. */
static void emu_sched_end(emu_sched_t *k)
{
    emu_cluster_t *c = k->c;
    for (int d = 0; d < c->ndev; d++) {
        emu_fiber_t *f = &c->fibers[d];
        if (!f->done) atomic_store(&c->devs[d].done, true);
        if (c->devs[d].lanes) c->devs[d].lanes->active = false; /* left waiting too */
#ifdef EMU_TSAN
        __tsan_destroy_fiber(f->tsan);
        f->tsan = NULL;
#endif
    }
    for (emu_sync_t *s = c->syncs; s; s = s->next) s->fw_head = s->fw_tail = NULL;
}

moemu_status_t emu_fibers_run(emu_cluster_t *c, emu_dev_fn fn, void *arg)
{
    MOEMU_CHECK(emu_fibers_get(c));
    emu_sched_t k = {.c = c, .fn = fn, .arg = arg};
    k.cur = &k.main;
    /* a device's function may run a cluster of its own: this thread's
     * scheduler, device and message buffer come back after */
    emu_sched_t *outer = emu_sched_self;
    emu_dev_t *self = emu_self;
    char *err = emu_err_redirect(NULL);
    emu_sched_self = &k;
    emu_sched_start(&k);
    emu_sched_loop(&k);
    emu_sched_end(&k);
    emu_sched_self = outer;
    emu_self = self;
    emu_err_redirect(err);
    if (k.msg[0]) return moemu_fail(MOEMU_ERR_INVALID, "%s", k.msg);
    return MOEMU_OK;
}

/* ---- lanes: micro-batches taking turns on one device (emu.h, "Lanes")
 *
 * Each lane is a fiber with the device's own emu_self. On a device
 * thread the lanes switch through a scheduler of their own (own), which
 * the syncs never see: a lane that waits in a collective blocks the
 * thread, as the device would. In a coroutine run they are fibers of the
 * run's scheduler, so a lane that waits lets other devices run, and the
 * one woken is the lane that waited. */

/* The lane after i that is not done, i itself if none is, -1 if i is. */
static int emu_lane_next(const emu_lanes_t *L, int i)
{
    for (int s = 1; s <= L->n; s++) {
        int j = (i + s) % L->n;
        if (!L->fib[j].done) return j;
    }
    return -1;
}

/* Give the device from lane i to lane j, or to the caller (j < 0). The
 * device's layer tag travels with its lane (the trace's layer column). */
static void emu_lane_switch(emu_lanes_t *L, emu_dev_t *dev, int i, int j)
{
    L->layer[i] = dev->layer;
    L->cur = j;
    emu_fiber_switch(L->k, &L->fib[i], j < 0 ? L->caller : &L->fib[j]);
    dev->layer = L->layer[i];
}

static void emu_lane_entry(void)
{
    emu_dev_t *dev = emu_self;
    emu_lanes_t *L = dev->lanes;
    int i = L->cur;
    emu_fiber_arrived(L->k);
    moemu_status_t st = L->fn(L->args[i]);
    L->st[i] = st;
    /* the others could wait for this lane's collectives for ever */
    if (st != MOEMU_OK && dev->cluster) emu_cluster_abort(dev->cluster);
    L->fib[i].done = true;
    emu_lane_switch(L, dev, i, emu_lane_next(L, i)); /* -1, the caller, when all are done */
    abort(); /* a lane that is done is never switched to */
}

static moemu_status_t emu_lanes_get(emu_dev_t *dev)
{
    if (dev->lanes) return MOEMU_OK;
    emu_lanes_t *L = calloc(1, sizeof *L);
    if (!L) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate lanes for device %d", dev->rank);
    dev->lanes = L;
    for (int i = 0; i < EMU_LANES_MAX; i++) {
        L->fib[i].dev = dev;
        moemu_status_t st = emu_fiber_map(&L->fib[i], dev->rank);
        if (st != MOEMU_OK) {
            emu_lanes_free(dev);
            return st;
        }
    }
    return MOEMU_OK;
}

void emu_lanes_free(emu_dev_t *dev)
{
    emu_lanes_t *L = dev->lanes;
    for (int i = 0; L && i < EMU_LANES_MAX; i++)
        if (L->fib[i].map) munmap(L->fib[i].map, L->fib[i].map_len);
    free(L);
    dev->lanes = NULL;
}

/* Lane i's failure as the run's: a lane's own failure before a peer's
 * "stopped", then the first lane. */
static moemu_status_t emu_lanes_status(emu_lanes_t *L)
{
    int f = -1;
    for (int i = 0; i < L->n; i++)
        if (L->st[i] != MOEMU_OK && (f < 0 || (L->st[f] == MOEMU_ERR_PEER &&
                                               L->st[i] != MOEMU_ERR_PEER)))
            f = i;
    return f < 0 ? MOEMU_OK : moemu_fail(L->st[f], "%s", L->fib[f].err);
}

moemu_status_t emu_dev_lanes(emu_dev_t *dev, int n, emu_lane_fn fn, void *const *args)
{
    if (n < 1 || n > EMU_LANES_MAX || (dev->lanes && dev->lanes->active))
        return moemu_fail(MOEMU_ERR_INVALID, "device %d: %d lanes (1 to %d, not nested)",
                          dev->rank, n, EMU_LANES_MAX);
    if (n == 1) return fn(args[0]);
    MOEMU_CHECK(emu_lanes_get(dev));
    emu_lanes_t *L = dev->lanes;
    char *err = emu_err_redirect(NULL); /* the caller's buffer, to put back */
    emu_err_redirect(err);
    L->k = emu_sched_self ? emu_sched_self : &L->own;
    if (!emu_sched_self) {
        L->own = (emu_sched_t){.c = dev->cluster};
        L->own.cur = &L->own.main;
#ifdef EMU_TSAN
        L->own.main.tsan = __tsan_get_current_fiber();
#endif
    }
    L->caller = L->k->cur;
    L->n = n, L->fn = fn, L->args = args, L->active = true;
    for (int i = 0; i < n; i++) {
        emu_fiber_t *f = &L->fib[i];
        f->done = false;
        f->asan_fake = NULL;
        f->err[0] = '\0';
        L->st[i] = MOEMU_OK;
        L->layer[i] = dev->layer;
#ifdef EMU_TSAN
        f->tsan = __tsan_create_fiber(0);
#endif
        emu_fiber_prepare(f, emu_lane_entry);
    }
    L->cur = 0;
    emu_fiber_switch(L->k, L->caller, &L->fib[0]);
    /* every lane is done: the caller's device and messages again */
    L->active = false;
    emu_self = dev;
    emu_err_redirect(err);
#ifdef EMU_TSAN
    for (int i = 0; i < n; i++) __tsan_destroy_fiber(L->fib[i].tsan);
#endif
    return emu_lanes_status(L);
}

void emu_dev_lane_yield(emu_dev_t *dev)
{
    emu_lanes_t *L = dev->lanes;
    if (!L || !L->active) return;
    int i = L->cur, j = emu_lane_next(L, i);
    if (j != i) emu_lane_switch(L, dev, i, j);
}

bool emu_dev_in_lanes(const emu_dev_t *dev) { return dev->lanes && dev->lanes->active; }
