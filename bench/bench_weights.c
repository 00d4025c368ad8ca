/* Generating a model's weights against memset, side by side.
 *
 * Times wts_generate_all of a model (default moe-10b-plan, as `moemu run`
 * generates it: fresh memory, every host core) and, alternating with it in
 * the same run, a memset of freshly mapped memory of (a) the bytes of the
 * weights in fp32 and (b) their bytes in the emulated dtype, which moemu
 * holds an fp16 or bf16 model's matrices in (both on one thread, as a plain memset;
 * (a) also on every core, for reference); then the generation on the scalar
 * reference kernel (an element at a time, what every run did before the
 * vector kernels), after checking that it gives the same bits. Each figure
 * is the best of --reps; mapping and first touch of the memory count, as
 * they do in a run, unmapping does not. The memsets' memory asks for huge
 * pages, as the weights' block does.
 *
 * usage: bench_weights [--model M] [--reps N] */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/models/weights.h"

static int fail(void)
{
    fprintf(stderr, "bench_weights: %s\n", moemu_errmsg());
    return 2;
}

typedef struct {
    char *p;
    size_t bytes;
} slice_t;

static void *memset_slice(void *arg)
{
    slice_t *s = arg;
    memset(s->p, 1, s->bytes);
    return NULL;
}

/* Seconds to map `bytes` of fresh memory and memset them on `threads`
 * threads (slices, page-aligned); -1 if the mapping fails. */
static double memset_fresh(size_t bytes, int threads)
{
    enum { MAX_THREADS = 64 };
    double t0 = emu_host_seconds();
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE); /* as the weights' block asks (engine/models/weights.c) */
#endif
    threads = threads < MAX_THREADS ? threads : MAX_THREADS;
    size_t per = (bytes / (size_t)threads + 4095) & ~(size_t)4095;
    pthread_t th[MAX_THREADS];
    slice_t sl[MAX_THREADS];
    int started = 0;
    for (int i = 0; i < threads; i++) {
        size_t a = per * (size_t)i < bytes ? per * (size_t)i : bytes;
        sl[i] = (slice_t){p + a, bytes - a < per ? bytes - a : per};
        if (i == 0 || pthread_create(&th[started], NULL, memset_slice, &sl[i]) != 0)
            memset_slice(&sl[i]);
        else
            started++;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    double t = emu_host_seconds() - t0;
    munmap(p, bytes);
    return t;
}

/* Seconds of wts_generate_all on kernel k; the weights stay in *w. */
static moemu_status_t generate(wts_t *w, const cfg_model_t *cfg, int k, double *t)
{
    if (!wts_generate_kernel(k)) return moemu_fail(MOEMU_ERR_INVALID, "kernel %d unsupported", k);
    double t0 = emu_host_seconds();
    moemu_status_t st = wts_generate_all(w, cfg, 1);
    *t = emu_host_seconds() - t0;
    wts_generate_kernel(WTS_GEN_BEST);
    return st;
}

static void keep_best(double *best, double t)
{
    if (t < *best) *best = t;
}

enum { GEN, SCALAR, SET32, SETDT, SET32_ALL, FIGURES };

/* One repetition: the vector generation, both memsets, the scalar one;
 * the first also checks that the scalar one gives the same bits. */
static int rep(const cfg_model_t *cfg, bool check, double best[FIGURES], size_t *floats_out,
               double *held)
{
    wts_t w, ref;
    double t;
    if (generate(&w, cfg, WTS_GEN_BEST, &t) != MOEMU_OK) return fail();
    keep_best(&best[GEN], t);
    size_t floats = (size_t)(w.n_floats + w.n_packed);
    *floats_out = floats;
    *held = 4.0 * (double)w.n_floats + 2.0 * (double)w.n_packed;
    if (!check) wts_free(&w);
    double t32 = memset_fresh(4 * floats, 1),
           tdt = memset_fresh(emu_dtype_size(cfg->dtype) * floats, 1),
           tall = memset_fresh(4 * floats, (int)sysconf(_SC_NPROCESSORS_ONLN));
    if (t32 < 0 || tdt < 0 || tall < 0) {
        fprintf(stderr, "bench_weights: cannot map %zu bytes\n", 4 * floats);
        return 2;
    }
    keep_best(&best[SET32], t32);
    keep_best(&best[SETDT], tdt);
    keep_best(&best[SET32_ALL], tall);
    if (generate(&ref, cfg, WTS_GEN_SCALAR, &t) != MOEMU_OK) return fail();
    keep_best(&best[SCALAR], t);
    if (check) {
        bool same = memcmp(w.block, ref.block, 4 * (size_t)w.n_floats) == 0 &&
                    (!w.n_packed || memcmp(w.packed, ref.packed, 2 * (size_t)w.n_packed) == 0);
        wts_free(&w);
        if (!same) {
            fprintf(stderr, "bench_weights: the %s kernel's weights differ from the scalar "
                            "reference's\n", emu_simd_name(emu_simd_best()));
            wts_free(&ref);
            return 1;
        }
    }
    wts_free(&ref);
    return 0;
}

int main(int argc, char **argv)
{
    emu_host_prepare(argv);
    const char *model = "moe-10b-plan";
    int reps = 3;
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"reps", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'm') model = optarg;
        else if (c == 'r') reps = atoi(optarg);
        else return 2;
    }
    if (reps < 1) {
        fprintf(stderr, "bench_weights: --reps must be positive\n");
        return 2;
    }
    cfg_model_t cfg;
    if (cfg_load(&cfg, model) != MOEMU_OK) return fail();
    double best[FIGURES] = {1e30, 1e30, 1e30, 1e30, 1e30};
    size_t n = 0;
    double held = 0;
    for (int i = 0; i < reps; i++) {
        int rc = rep(&cfg, i == 0, best, &n, &held);
        if (rc) return rc;
    }
    double floats = (double)n, b32 = 4 * floats, bdt = (double)emu_dtype_size(cfg.dtype) * floats;
    const char *dt = emu_dtype_name(cfg.dtype);
    char what[FIGURES][64];
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(what[GEN], 64, "generate, %s kernel", emu_simd_name(emu_simd_best()));
    snprintf(what[SCALAR], 64, "generate, scalar reference");
    snprintf(what[SET32], 64, "memset of the fp32 bytes");
    snprintf(what[SETDT], 64, "memset of the %s bytes", dt);
    snprintf(what[SET32_ALL], 64, "the same on %ld threads", cores);
    const double bytes[FIGURES] = {held, held, b32, bdt, b32};
    printf("%s: %.3g weights, %s; generation on the %ld host cores, memset on one; best of %d\n",
           model, floats, dt, cores, reps);
    printf("%-34s %9s %9s %9s\n", "", "GB", "s", "GB/s");
    for (int f = 0; f < FIGURES; f++)
        printf("%-34s %9.3f %9.3f %9.2f\n", what[f], bytes[f] / 1e9, best[f],
               bytes[f] / best[f] / 1e9);
    printf("summary: weights generated / memset of their fp32 bytes | %.3f | 1.5\n",
           best[GEN] / best[SET32]);
    printf("summary: weights generated / memset of their bytes in the emulated dtype | %.3f | 1.5\n",
           best[GEN] / best[SETDT]);
    printf("summary: weight generation, new / scalar | %.3f | -\n", best[GEN] / best[SCALAR]);
    return 0;
}
