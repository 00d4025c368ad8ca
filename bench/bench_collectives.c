/* Host throughput of the shared-memory collectives against memcpy, side
 * by side.
 *
 * For 8 devices (one node of the card-400tf-64gb preset), all-reduce and
 * all-to-all on fp32 buffers of 1 MiB and 64 MiB per device: check the
 * result, then time the best of --reps calls (after one to warm up), each
 * from the first device's start to the last device's end. Host GB/s counts the bytes that land in the receive
 * buffers of all devices (devices x size); the baselines copy the same
 * bytes with one memcpy thread, and with every device thread copying its
 * own buffer at the same time.
 *
 * usage: bench_collectives [--devices N] [--reps N] */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "emu/emu.h"
#include "parallel/par.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum { OP_ALLREDUCE, OP_ALLTOALL, OP_MEMCPY };

#define MAX_REPS 64

typedef struct {
    par_comm_t *w;
    int op, reps;
    size_t n; /* floats per device buffer */
    float **send, **recv;
    double (*t0)[MAX_REPS], (*t1)[MAX_REPS]; /* [device][rep] wall times */
    double best; /* seconds: the best rep, first start to last end */
} bench_t;

static moemu_status_t bench_fn(emu_dev_t *dev, void *arg)
{
    bench_t *b = arg;
    int r = emu_dev_rank(dev), p = par_comm_size(b->w);
    for (int i = 0; i < b->reps; i++) {
        MOEMU_CHECK(par_barrier(b->w, dev));
        b->t0[r][i] = now();
        if (b->op == OP_ALLREDUCE)
            MOEMU_CHECK(par_allreduce(b->send[r], b->recv[r], b->n,
                                      EMU_DTYPE_FP32, PAR_OP_SUM, b->w, dev));
        else if (b->op == OP_ALLTOALL)
            MOEMU_CHECK(par_alltoall(b->send[r], b->recv[r], b->n / (size_t)p,
                                     EMU_DTYPE_FP32, b->w, dev));
        else
            memcpy(b->recv[r], b->send[r], b->n * sizeof(float));
        b->t1[r][i] = now();
        MOEMU_CHECK(par_barrier(b->w, dev));
    }
    return MOEMU_OK;
}

/* Run the reps; the time of a rep runs from the first device's start to
 * the last device's end. Rep 0 warms up and is not counted. */
static moemu_status_t bench_run(emu_cluster_t *cl, bench_t *b, int ndev)
{
    MOEMU_CHECK(emu_cluster_run(cl, bench_fn, b));
    b->best = 0;
    for (int i = 1; i < b->reps; i++) {
        double lo = b->t0[0][i], hi = b->t1[0][i];
        for (int r = 1; r < ndev; r++) {
            if (b->t0[r][i] < lo) lo = b->t0[r][i];
            if (b->t1[r][i] > hi) hi = b->t1[r][i];
        }
        if (i == 1 || hi - lo < b->best) b->best = hi - lo;
    }
    return MOEMU_OK;
}

static int fail(void)
{
    fprintf(stderr, "bench_collectives: %s\n", moemu_errmsg());
    return 2;
}

/* Integer-valued data: sums are exact, so the check is exact. */
static int verify(const bench_t *b, int p)
{
    size_t n = b->n, blk = n / (size_t)p;
    for (int r = 0; r < p; r++)
        for (size_t i = 0; i < n; i += 997) {
            float want = 0;
            if (b->op == OP_ALLREDUCE)
                for (int q = 0; q < p; q++) want += b->send[q][i];
            else
                want = b->send[i / blk][(size_t)r * blk + i % blk];
            if (b->recv[r][i] != want) {
                fprintf(stderr, "bench_collectives: wrong result on device %d "
                                "at %zu: %g, expected %g\n",
                        r, i, b->recv[r][i], want);
                return 1;
            }
        }
    return 0;
}

int main(int argc, char **argv)
{
    int ndev = 8, reps = 5;
    static const struct option opts[] = {{"devices", required_argument, 0, 'd'},
                                         {"reps", required_argument, 0, 'r'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'd') ndev = atoi(optarg);
        else if (c == 'r') reps = atoi(optarg);
        else {
            fprintf(c == 'h' ? stdout : stderr,
                    "usage: bench_collectives [--devices N] [--reps N]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (ndev < 1 || ndev > 64 || reps < 1 || reps >= MAX_REPS) {
        fprintf(stderr, "bench_collectives: --devices in 1..64, --reps in "
                        "1..%d\n", MAX_REPS - 1);
        return 2;
    }
    emu_hw_t hw;
    if (emu_hw_load("card-400tf-64gb", &hw) != MOEMU_OK) return fail();
    hw.topo.devices_per_node = ndev;
    emu_cluster_t *cl;
    if (emu_cluster_create(&hw.spec, &hw.topo, ndev, NULL, &cl) != MOEMU_OK)
        return fail();
    par_comm_t *w;
    if (par_comm_create_world(cl, &w) != MOEMU_OK) return fail();

    printf("bench_collectives: %d devices on %d host cores, fp32, best of %d\n\n",
           ndev, emu_cluster_host_cores(cl), reps);
    printf("%-11s %9s %9s %9s | %9s %6s | %9s %6s\n", "op", "size/dev",
           "time ms", "GB/s", "memcpy1", "ratio", "memcpyN", "ratio");

    static const size_t sizes[] = {1u << 20, 64u << 20};
    int status = 0;
    double big[2] = {0, 0};
    for (size_t si = 0; si < 2; si++) {
        size_t bytes = sizes[si], n = bytes / sizeof(float);
        bench_t b = {.w = w, .reps = reps + 1, .n = n};
        b.t0 = calloc((size_t)ndev, sizeof *b.t0);
        b.t1 = calloc((size_t)ndev, sizeof *b.t1);
        b.send = calloc((size_t)ndev, sizeof *b.send);
        b.recv = calloc((size_t)ndev, sizeof *b.recv);
        for (int r = 0; r < ndev; r++) {
            b.send[r] = malloc(bytes);
            b.recv[r] = malloc(bytes);
            if (!b.send[r] || !b.recv[r]) {
                fprintf(stderr, "bench_collectives: out of host memory\n");
                return 2;
            }
            for (size_t i = 0; i < n; i++)
                b.send[r][i] = (float)((i * 31 + (size_t)r * 7) % 1001);
            memset(b.recv[r], 0, bytes);
        }
        double total = (double)bytes * ndev;

        /* baselines: one thread copying every device's bytes; every device
         * thread copying its own at once */
        double m1 = 0;
        for (int i = 0; i < reps; i++) {
            double t0 = now();
            for (int r = 0; r < ndev; r++) memcpy(b.recv[r], b.send[r], bytes);
            double t = now() - t0;
            if (i == 0 || t < m1) m1 = t;
        }
        b.op = OP_MEMCPY;
        if (bench_run(cl, &b, ndev) != MOEMU_OK) return fail();
        double mn = b.best;

        for (int op = OP_ALLREDUCE; op <= OP_ALLTOALL; op++) {
            b.op = op;
            for (int r = 0; r < ndev; r++) memset(b.recv[r], 0, bytes);
            if (bench_run(cl, &b, ndev) != MOEMU_OK) return fail();
            if (verify(&b, ndev)) status = 1;
            printf("%-11s %6zu MiB %9.3f %9.2f | %9.2f %6.2f | %9.2f %6.2f\n",
                   op == OP_ALLREDUCE ? "all-reduce" : "all-to-all",
                   bytes >> 20, b.best * 1e3, total / b.best / 1e9,
                   total / m1 / 1e9, m1 / b.best, total / mn / 1e9,
                   mn / b.best);
            big[op - OP_ALLREDUCE] = mn / b.best; /* the last size: 64 MiB */
        }
        for (int r = 0; r < ndev; r++) {
            free(b.send[r]);
            free(b.recv[r]);
        }
        free(b.send);
        free(b.recv);
        free(b.t0);
        free(b.t1);
    }
    printf("\nGB/s: bytes landing in all devices' receive buffers per second.\n"
           "memcpy1: one thread copies the same bytes; memcpyN: each device\n"
           "thread copies its own buffer at once. ratio: memcpy time / "
           "collective time.\n");
    for (int k = 0; k < 2; k++)
        printf("summary: %s of 64 MiB on %d devices, memcpyN time / its time | %.2f | -\n",
               k ? "all-to-all" : "all-reduce", ndev, big[k]);
    par_comm_destroy(w);
    emu_cluster_destroy(cl);
    return status;
}
