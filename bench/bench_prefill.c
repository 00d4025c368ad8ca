/* Prefill throughput of the engine against plain sgemm, side by side.
 *
 * Times the prefill of a model (default moe-10b-plan, batch 4 x 512
 * tokens) on one device, then sgemm calls of the same total FLOPs on the
 * same threads, and prints both rates and their ratio. Each is the best of
 * --reps runs. The engine's FLOPs are those its kernels charge.
 *
 * usage: bench_prefill [--model M] [--batch B] [--prompt-len L] [--reps N] */
#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/run/runner.h"

static double dev_flops(const emu_dev_t *dev)
{
    double f = 0;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) f += emu_dev_kernel_stats(dev, k)->flops;
    return f;
}

static int fail(void)
{
    fprintf(stderr, "bench_prefill: %s\n", moemu_errmsg());
    return 2;
}

int main(int argc, char **argv)
{
    emu_host_prepare(argv);
    const char *model = "moe-10b-plan";
    int batch = 4, len = 512, reps = 3;
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"batch", required_argument, NULL, 'b'},
                                         {"prompt-len", required_argument, NULL, 'l'},
                                         {"reps", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'm') model = optarg;
        else if (c == 'b') batch = atoi(optarg);
        else if (c == 'l') len = atoi(optarg);
        else if (c == 'r') reps = atoi(optarg);
        else return 2;
    }
    if (batch < 1 || len < 1 || reps < 1) {
        fprintf(stderr, "bench_prefill: --batch, --prompt-len and --reps must be positive\n");
        return 2;
    }
    cfg_model_t cfg;
    wts_t w;
    wl_t wl;
    if (cfg_load(&cfg, model) != MOEMU_OK) return fail();
    wl_opts_t wo = {.batch = batch, .prompt_len = len, .decode = 1};
    if (wl_make(&wl, &wo, &cfg) != MOEMU_OK) return fail();
    if (wts_generate_all(&w, &cfg, 1) != MOEMU_OK) return fail();
    emu_hw_t hw;
    if (emu_hw_load("card-400tf-64gb", &hw) != MOEMU_OK) return fail();
    runner_opts_t one;
    runner_opts_one_device(&one, &hw, 1, 1);

    /* the engine: best of reps, each on a fresh device */
    double t_engine = 1e30, flops = 0;
    for (int r = 0; r < reps; r++) {
        emu_cluster_t *cl;
        model_out_t out;
        model_opts_t mo = {0};
        if (runner_generate(&out, &cl, &w, &wl, &one, &mo) != MOEMU_OK) return fail();
        flops = dev_flops(emu_cluster_dev(cl, 0));
        if (out.wall_prefill < t_engine) t_engine = out.wall_prefill;
        model_out_free(&out);
        emu_cluster_destroy(cl);
    }

    /* sgemm: the shape of an expert's first product, T/4 rows, repeated to
     * the engine's FLOPs */
    int M = batch * len / 4 > 0 ? batch * len / 4 : 1, N = cfg.intermediate_size,
        K = cfg.hidden_size;
    double per = 2.0 * M * N * K;
    long calls = (long)(flops / per + 0.5);
    if (calls < 1) calls = 1;
    float *A = malloc(sizeof(float) * (size_t)M * K), *B = malloc(sizeof(float) * (size_t)N * K),
          *C = malloc(sizeof(float) * (size_t)M * N);
    if (!A || !B || !C) return 2;
    for (long i = 0; i < (long)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)N * K; i++) B[i] = (float)(i % 5) * 0.1f;
    /* check, then time: C[0] is a known dot product */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
    double want = 0;
    for (int k = 0; k < K; k++) want += (double)A[k] * B[k];
    if (C[0] < want - 1e-3 * (1 + want) || C[0] > want + 1e-3 * (1 + want)) {
        fprintf(stderr, "bench_prefill: sgemm check failed: %g vs %g\n", C[0], want);
        return 2;
    }
    double t_gemm = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = emu_host_seconds();
        for (long i = 0; i < calls; i++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K,
                        0.0f, C, N);
        double t = emu_host_seconds() - t0;
        if (t < t_gemm) t_gemm = t;
    }
    double g_engine = flops / t_engine / 1e9, g_gemm = per * calls / t_gemm / 1e9;
    printf("%-28s %10s %12s %10s\n", "variant", "time s", "GFLOP", "GFLOP/s");
    printf("engine prefill %-13s %10.3f %12.1f %10.1f\n", model, t_engine, flops / 1e9, g_engine);
    printf("sgemm %5dx%5dx%5d x%-5ld %10.3f %12.1f %10.1f\n", M, N, K, calls, t_gemm,
           per * calls / 1e9, g_gemm);
    printf("ratio engine / sgemm: %.3f  (batch %d x %d tokens, %d BLAS threads, best of %d)\n",
           g_engine / g_gemm, batch, len, openblas_get_num_threads(), reps);
    printf("summary: prefill GFLOP/s / sgemm GFLOP/s, same threads | %.3f | 0.85\n",
           g_engine / g_gemm);
    free(A);
    free(B);
    free(C);
    wts_free(&w);
    wl_free(&wl);
    return 0;
}
