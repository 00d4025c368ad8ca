/* Weights held packed on the host (layers.h): the regions that hold them,
 * and their widening where the layers read them. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

enum { PACKED_MAX = 16 };

static struct {
    const float *lo, *hi;
    const uint16_t *packed;
    emu_dtype_t dt;
} regions[PACKED_MAX];
static atomic_int n_regions;
static pthread_rwlock_t regions_lock = PTHREAD_RWLOCK_INITIALIZER;

/* Scratch for the widened operands, one per host core: more products at
 * once cannot run anyway, and the host memory stays a fixed overhead (a
 * core's largest weight matrix in fp32) however many devices run. */
typedef struct {
    float *buf;
    size_t cap;
    bool busy;
} scratch_t;

static scratch_t *scratch;
static int n_scratch;
static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t scratch_free = PTHREAD_COND_INITIALIZER;

int layer_packed_buffers(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 0 ? (int)(cores < 256 ? cores : 256) : 1;
}

/* n_scratch buffers of at least n floats each; false out of memory */
static bool scratch_reserve(size_t n)
{
    bool ok = true;
    pthread_mutex_lock(&scratch_lock);
    if (!scratch) {
        int k = layer_packed_buffers();
        scratch = calloc((size_t)k, sizeof *scratch);
        n_scratch = scratch ? k : 0;
        ok = scratch != NULL;
    }
    for (int i = 0; ok && i < n_scratch; i++)
        if (scratch[i].cap < n) {
            while (scratch[i].busy) /* another model's product is in it */
                pthread_cond_wait(&scratch_free, &scratch_lock);
            float *b = malloc(sizeof(float) * n); /* touched only where widened */
            if (!b) ok = false;
            else free(scratch[i].buf), scratch[i].buf = b, scratch[i].cap = n;
        }
    pthread_mutex_unlock(&scratch_lock);
    return ok;
}

moemu_status_t layer_packed_add(const float *lo, const float *hi, const uint16_t *packed,
                                emu_dtype_t dt, int64_t largest)
{
    if (dt != EMU_DTYPE_FP16 && dt != EMU_DTYPE_BF16)
        return moemu_fail(MOEMU_ERR_INVALID, "packed weights in %s: only fp16 and bf16 pack",
                          emu_dtype_name(dt));
    if (!scratch_reserve((size_t)largest + 1))
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d buffers of %.3g GB to widen "
                          "weight matrices", n_scratch, 4.0 * (double)largest / 1e9);
    pthread_rwlock_wrlock(&regions_lock);
    int n = atomic_load(&n_regions);
    if (n < PACKED_MAX) {
        regions[n].lo = lo, regions[n].hi = hi, regions[n].packed = packed, regions[n].dt = dt;
        atomic_store(&n_regions, n + 1);
    }
    pthread_rwlock_unlock(&regions_lock);
    return n < PACKED_MAX ? MOEMU_OK
                          : moemu_fail(MOEMU_ERR_NOMEM, "more than %d models with packed weights "
                                       "at once", PACKED_MAX);
}

/* The scratch buffers go with the last region: a process that holds no
 * packed weights holds none. */
static void scratch_release(void)
{
    pthread_mutex_lock(&scratch_lock);
    for (int i = 0; i < n_scratch; i++) free(scratch[i].buf);
    free(scratch);
    scratch = NULL;
    n_scratch = 0;
    pthread_mutex_unlock(&scratch_lock);
}

void layer_packed_remove(const float *lo)
{
    pthread_rwlock_wrlock(&regions_lock);
    int n = atomic_load(&n_regions);
    for (int i = 0; i < n; i++)
        if (regions[i].lo == lo) {
            regions[i] = regions[--n];
            break;
        }
    atomic_store(&n_regions, n);
    pthread_rwlock_unlock(&regions_lock);
    if (n == 0) scratch_release();
}

bool layer_packed_find(const float *p, const uint16_t **q, emu_dtype_t *dt)
{
    if (atomic_load_explicit(&n_regions, memory_order_relaxed) == 0) return false;
    bool found = false;
    pthread_rwlock_rdlock(&regions_lock);
    for (int i = 0; i < atomic_load(&n_regions) && !found; i++)
        if (p >= regions[i].lo && p < regions[i].hi) {
            *q = regions[i].packed + (p - regions[i].lo);
            *dt = regions[i].dt;
            found = true;
        }
    pthread_rwlock_unlock(&regions_lock);
    return found;
}

bool layer_weights_read(float *out, const float *w, int64_t n)
{
    const uint16_t *q;
    emu_dtype_t dt;
    if (!layer_packed_find(w, &q, &dt)) return false;
    emu_dtype_widen_n(dt, out, q, n);
    return true;
}

/* A free scratch buffer (waiting for one); every one holds the largest
 * matrix of every region (layer_packed_add). */
static scratch_t *scratch_take(void)
{
    pthread_mutex_lock(&scratch_lock);
    scratch_t *s = NULL;
    while (!s) {
        for (int i = 0; i < n_scratch && !s; i++)
            if (!scratch[i].busy) s = &scratch[i];
        if (!s) pthread_cond_wait(&scratch_free, &scratch_lock);
    }
    s->busy = true;
    pthread_mutex_unlock(&scratch_lock);
    return s;
}

static void scratch_give(scratch_t *s)
{
    pthread_mutex_lock(&scratch_lock);
    s->busy = false;
    pthread_cond_broadcast(&scratch_free); /* a taker and a reserver may both wait */
    pthread_mutex_unlock(&scratch_lock);
}

bool layer_packed_sgemm(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc)
{
    const uint16_t *q;
    emu_dtype_t dt;
    if (!layer_packed_find(B, &q, &dt)) return false;
    /* B whole, as the operand OpenBLAS would have read: its sums depend on
     * the shapes it is given, never on the operand's leading dimension */
    int rows = trans_b ? N : K, cols = trans_b ? K : N;
    scratch_t *s = scratch_take();
    for (int r = 0; r < rows; r++)
        emu_dtype_widen_n(dt, s->buf + (size_t)r * cols, q + (size_t)r * ldb, cols);
    layer_sgemm_blas(trans_b, M, N, K, alpha, A, lda, s->buf, cols, beta, C, ldc);
    scratch_give(s);
    return true;
}
