/* The host's limits and the gate of BLAS callers: refusals that name the
 * need, what is left and the limit; the limits read from the kernel; a
 * cluster the host cannot start refused before it is allocated; at most
 * emu_blas_callers() threads inside BLAS, however many call. Criterion
 * runs each test in a process of its own: the gate and the limits set
 * here start afresh in each. */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "emu/emu.h"

static void expect_msg(const char *want)
{
    cr_expect(strstr(moemu_errmsg(), want), "message lacks \"%s\":\n%s", want, moemu_errmsg());
}

/* No limit but the one a test sets. */
static emu_limits_t unlimited(void)
{
    emu_limit_t none = {.left = INFINITY, .limit = INFINITY};
    return (emu_limits_t){none, none, none, none};
}

/* ---- refusals */

Test(need, memory_names_the_parts_and_the_limit)
{
    emu_limits_t l = unlimited();
    l.mem = (emu_limit_t){4e9, 8e9, "the cgroup's memory.max"};
    emu_need_t n = {0};
    emu_need_add(&n, "weights", 3e9, 3e9);
    emu_need_add(&n, "outputs", 1e9, 1e9);
    emu_need_add(&n, "weights", 1e9, 1e9); /* adds to its part */
    cr_assert_eq(emu_need_check(&n, &l, "moemu run"), MOEMU_ERR_NOMEM);
    expect_msg("moemu run needs 5.00 GB of host memory (weights 4.00 GB, outputs 1.00 GB), but "
               "only 4.00 GB are available (the cgroup's memory.max of 8.00 GB)");
    l.mem.left = 5e9;
    cr_assert_eq(emu_need_check(&n, &l, "moemu run"), MOEMU_OK);
}

Test(need, address_space_threads_and_mappings)
{
    emu_limits_t l = unlimited();
    l.as = (emu_limit_t){1e9, 2.15e9, "the address-space limit (RLIMIT_AS, ulimit -v)"};
    emu_need_t n = {.hint = "; or fewer devices"};
    emu_need_add(&n, "BLAS buffers", 0, 2e9);
    cr_assert_eq(emu_need_check(&n, &l, "a run"), MOEMU_ERR_NOMEM);
    expect_msg("a run needs 2.00 GB of address space (BLAS buffers 2.00 GB), but the "
               "address-space limit (RLIMIT_AS, ulimit -v) of 2.15 GB leaves 1.00 GB; or fewer "
               "devices");
    l = unlimited();
    l.threads = (emu_limit_t){10, 1000, "/proc/sys/kernel/threads-max"};
    n = (emu_need_t){.threads = 100};
    cr_assert_eq(emu_need_check(&n, &l, "a run"), MOEMU_ERR_NOMEM);
    expect_msg("a run needs 100 threads (one per device), but /proc/sys/kernel/threads-max of "
               "1000 leaves 10");
    l = unlimited();
    l.maps = (emu_limit_t){60000, 65530, "vm.max_map_count"};
    n = (emu_need_t){.maps = 65536};
    cr_assert_eq(emu_need_check(&n, &l, "a run"), MOEMU_ERR_NOMEM);
    expect_msg("a run needs 65536 memory mappings");
    expect_msg("but vm.max_map_count of 65530 leaves 60000");
}

/* Each device thread maps a stack; each BLAS caller at once, a buffer. */
Test(need, devices_count_stacks_and_blas_buffers)
{
    emu_need_t n = {0};
    emu_need_devices(&n, 16, 1e6);
    cr_assert_eq(n.threads, 16);
    cr_assert_geq(n.maps, 32);
    int callers = emu_blas_callers() < 16 ? emu_blas_callers() : 16;
    bool blas = false, threads = false;
    for (int i = 0; i < n.n; i++) {
        if (!strcmp(n.part[i].what, "BLAS buffers")) {
            blas = true;
            cr_expect_eq(n.part[i].mem, callers * 1e6);
            cr_expect_eq(n.part[i].as, callers * 128.0 * 1024 * 1024);
        }
        if (!strcmp(n.part[i].what, "device threads")) {
            threads = true;
            cr_expect_geq(n.part[i].as, 16 * 4096.0, "a stack each");
        }
    }
    cr_expect(blas && threads);
    emu_need_t dry = {0};
    emu_need_devices(&dry, 16, -1); /* no math: no BLAS */
    for (int i = 0; i < dry.n; i++) cr_expect_str_neq(dry.part[i].what, "BLAS buffers");
}

/* ---- the limits as the kernel has them */

Test(limits, address_space_limit_is_read)
{
    emu_limits_t l;
    emu_limits_read(&l);
    cr_assert_gt(l.mem.left, 0);
    cr_assert_gt(l.threads.left, 0);
    /* 2 GB more than the process has mapped (a sanitizer's shadow too) */
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double vm = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %lf", &vm) == 1) break;
    if (f) fclose(f);
    cr_assert_gt(vm, 0);
    double set = 1024.0 * vm + 2e9;
    struct rlimit r;
    cr_assert_eq(getrlimit(RLIMIT_AS, &r), 0);
    if (r.rlim_cur != RLIM_INFINITY && (double)r.rlim_cur < set) set = (double)r.rlim_cur;
    r.rlim_cur = (rlim_t)set;
    cr_assert_eq(setrlimit(RLIMIT_AS, &r), 0);
    emu_limits_read(&l);
    cr_expect_eq(l.as.limit, (double)(rlim_t)set);
    cr_expect(l.as.left > 0 && l.as.left <= 2e9, "left %g of %g", l.as.left, set);
    cr_expect_str_eq(l.as.name, "the address-space limit (RLIMIT_AS, ulimit -v)");
}

/* A cluster of more threads than the host allows is refused at once,
 * before its devices are allocated (four million devices would take
 * gigabytes and minutes first). */
Test(limits, cluster_beyond_the_thread_limit_refused_first)
{
    emu_spec_t spec = {.peak_flops = 1e14, .mfu = 0.5, .mem_bw = 1e12, .bw_util = 0.5,
                       .mem_capacity = 1e9, .launch_s = 1e-6};
    emu_topo_t topo = {.devices_per_node = 8, .intra_bw = 1e11, .intra_lat = 1e-6,
                       .inter_bw = 1e10, .inter_lat = 1e-5};
    emu_cluster_t *c = (emu_cluster_t *)1;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 1 << 22, NULL, &c), MOEMU_ERR_NOMEM);
    cr_assert_null(c);
    expect_msg("a cluster of 4194304 devices (a thread each) needs");
}

/* ---- the gate of BLAS callers */

static atomic_int g_inside, g_over;

static void *blas_caller(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20; i++) {
        emu_blas_enter();
        int in = atomic_fetch_add(&g_inside, 1) + 1;
        if (in > emu_blas_callers()) atomic_fetch_add(&g_over, 1);
        nanosleep(&(struct timespec){0, 200000}, NULL);
        atomic_fetch_sub(&g_inside, 1);
        emu_blas_leave();
    }
    return NULL;
}

Test(blas, gate_lets_in_at_most_its_callers)
{
    setenv("MOEMU_BLAS_CALLERS", "3", 1);
    cr_assert_eq(emu_blas_callers(), 3);
    pthread_t th[64];
    for (int i = 0; i < 64; i++) cr_assert_eq(pthread_create(&th[i], NULL, blas_caller, NULL), 0);
    for (int i = 0; i < 64; i++) pthread_join(th[i], NULL);
    cr_expect_eq(atomic_load(&g_over), 0);
    cr_expect_eq(emu_blas_most(), 3, "64 threads holding it filled the gate");
}

/* MAX_THREADS of the OpenBLAS build (the host's cores when it says none). */
static int library_bound(void)
{
    const char *p = strstr(openblas_get_config(), "MAX_THREADS=");
    return p ? atoi(p + strlen("MAX_THREADS=")) : (int)sysconf(_SC_NPROCESSORS_ONLN);
}

Test(blas, gate_follows_the_library)
{
    unsetenv("MOEMU_BLAS_CALLERS");
    cr_expect_eq(emu_blas_callers(), library_bound());
}

Test(blas, gate_is_never_raised)
{
    setenv("MOEMU_BLAS_CALLERS", "100000", 1);
    cr_expect_eq(emu_blas_callers(), library_bound());
}
