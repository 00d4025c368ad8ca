/* A decode step against the host's memory bandwidth, side by side.
 *
 * Decoding is bound by reading the weights: a step can go no faster than
 * the bytes it reads over the host's bandwidth. This times one-device
 * decode steps of a model (default moe-10b-plan, batch 1) and, in the same
 * run, a STREAM-style copy (a[i] = b[i] over arrays far larger than the
 * caches, on as many threads as OpenBLAS uses, bandwidth counted as bytes
 * read + written, as STREAM does), and prints the step's time against
 * (bytes a step reads) / (copy bandwidth).
 *
 * The bytes a step reads are those its kernels charge (weights, KV cache
 * and activations, counted by the engine in the emulated dtype), taken as
 * the difference of a run generating 1 + N tokens and one generating 1,
 * divided by N, and turned from the emulated dtype into the bytes the host
 * holds the weights in (at batch 1 the weights are nearly all of it): an
 * fp16 or bf16 model's matrices packed in the dtype, lm_head in fp32
 * (docs/weights.md), an fp32 model all in fp32. The step's time is device 0's host wall
 * time of the N decode steps over N. Each figure is the best of --reps.
 *
 * usage: bench_decode [--model M] [--batch B] [--prompt-len L]
 *                     [--steps N] [--reps N] */
#include <cblas.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/run/runner.h"

#define COPY_BYTES ((size_t)1 << 30) /* per array: far past any cache */
#define MAX_THREADS 64

static int fail(void)
{
    fprintf(stderr, "bench_decode: %s\n", moemu_errmsg());
    return 2;
}

typedef struct {
    float *dst;
    const float *src;
    size_t n;
} copy_part_t;

static void *copy_part(void *arg)
{
    copy_part_t *p = arg;
    memcpy(p->dst, p->src, sizeof(float) * p->n);
    return NULL;
}

/* The best copy bandwidth of reps, in bytes per second (read + written). */
static double copy_bandwidth(int threads, int reps)
{
    size_t n = COPY_BYTES / sizeof(float);
    float *a = mmap(NULL, COPY_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
          *b = mmap(NULL, COPY_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED) return 0;
    for (size_t i = 0; i < n; i++) b[i] = (float)(i & 1023); /* touched: no page faults timed */
    memset(a, 0, COPY_BYTES);
    copy_part_t part[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = emu_host_seconds();
        for (int i = 0; i < threads; i++) {
            size_t lo = n * i / threads, hi = n * (i + 1) / threads;
            part[i] = (copy_part_t){a + lo, b + lo, hi - lo};
            if (i > 0) pthread_create(&th[i], NULL, copy_part, &part[i]);
        }
        copy_part(&part[0]);
        for (int i = 1; i < threads; i++) pthread_join(th[i], NULL);
        double t = emu_host_seconds() - t0;
        if (t < best) best = t;
    }
    munmap(a, COPY_BYTES);
    munmap(b, COPY_BYTES);
    return 2.0 * COPY_BYTES / best;
}

/* The host's bytes for b bytes the engine charged in the emulated dtype
 * per step: packed, the same but for lm_head, read whole in fp32 each
 * step; else every byte widened to fp32. */
static double host_bytes(const wts_t *w, double b)
{
    double sz = (double)emu_dtype_size(w->cfg.dtype);
    if (!w->packed) return b * sizeof(float) / sz;
    return b + (sizeof(float) - sz) * (double)w->cfg.vocab_size * w->cfg.hidden_size;
}

static double charged_bytes(const emu_dev_t *dev)
{
    double b = 0;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) b += emu_dev_kernel_stats(dev, k)->bytes;
    return b;
}

/* One run generating `decode` tokens: device 0's charged bytes and its
 * decode wall time. */
static moemu_status_t run_once(const wts_t *w, const cfg_model_t *cfg, int batch, int len,
                               int decode, double *bytes, double *wall)
{
    wl_t wl;
    wl_opts_t wo = {.batch = batch, .prompt_len = len, .decode = decode, .seed = 1};
    MOEMU_CHECK(wl_make(&wl, &wo, cfg));
    runner_opts_t one;
    emu_hw_t hw;
    moemu_status_t st = emu_hw_load("card-400tf-64gb", &hw);
    if (st != MOEMU_OK) {
        wl_free(&wl);
        return st;
    }
    runner_opts_one_device(&one, &hw, 1, 1);
    emu_cluster_t *cl;
    model_out_t out;
    model_opts_t mo = {0};
    st = runner_generate(&out, &cl, w, &wl, &one, &mo);
    if (st == MOEMU_OK) {
        *bytes = charged_bytes(emu_cluster_dev(cl, 0));
        *wall = out.wall_decode;
        model_out_free(&out);
        emu_cluster_destroy(cl);
    }
    wl_free(&wl);
    return st;
}

int main(int argc, char **argv)
{
    emu_host_prepare(argv);
    const char *model = "moe-10b-plan";
    int batch = 1, len = 16, steps = 32, reps = 3;
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"batch", required_argument, NULL, 'b'},
                                         {"prompt-len", required_argument, NULL, 'l'},
                                         {"steps", required_argument, NULL, 'n'},
                                         {"reps", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'm') model = optarg;
        else if (c == 'b') batch = atoi(optarg);
        else if (c == 'l') len = atoi(optarg);
        else if (c == 'n') steps = atoi(optarg);
        else if (c == 'r') reps = atoi(optarg);
        else return 2;
    }
    if (batch < 1 || len < 1 || steps < 1 || reps < 1) {
        fprintf(stderr, "bench_decode: --batch, --prompt-len, --steps and --reps must be "
                        "positive\n");
        return 2;
    }
    cfg_model_t cfg;
    wts_t w;
    if (cfg_load(&cfg, model) != MOEMU_OK || wts_generate_all(&w, &cfg, 1) != MOEMU_OK)
        return fail();
    double b1 = 0, bn = 0, wall = 1e30;
    for (int r = 0; r < reps; r++) {
        double t;
        if (run_once(&w, &cfg, batch, len, 1, &b1, &t) != MOEMU_OK ||
            run_once(&w, &cfg, batch, len, 1 + steps, &bn, &t) != MOEMU_OK)
            return fail();
        if (t < wall) wall = t;
    }
    int threads = openblas_get_num_threads();
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    double bw = copy_bandwidth(threads, reps);
    if (bw <= 0) {
        fprintf(stderr, "bench_decode: cannot map the copy's arrays\n");
        return 2;
    }
    /* the engine counts bytes in the emulated dtype; the host reads the
     * weights in the dtype it holds them in */
    double step = wall / steps, read = host_bytes(&w, (bn - b1) / steps), ideal = read / bw;
    printf("%-34s %12s\n", "figure", "value");
    printf("%-34s %12.3f\n", "decode step, ms", 1e3 * step);
    printf("%-34s %12.1f\n", "bytes read per step, MB", read / 1e6);
    printf("%-34s %12.2f\n", "copy bandwidth, GB/s", bw / 1e9);
    printf("%-34s %12.3f\n", "bytes / bandwidth, ms", 1e3 * ideal);
    printf("ratio step / (bytes / bandwidth): %.3f  (%s, batch %d, %d-token prompts, %d steps, "
           "%d threads, best of %d)\n", step / ideal, model, batch, len, steps, threads, reps);
    printf("summary: decode step / (bytes read / copy bandwidth) | %.3f | 1.3\n", step / ideal);
    wts_free(&w);
    return 0;
}
