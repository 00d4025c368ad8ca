/* Collectives, whatever the transport. Each one is: members publish their
 * arguments and clocks (the transport's gather), all check that they
 * agree, each moves its part of the data through the transport's views
 * (par_plan: every element written once, by one member, reductions in rank
 * order), the transport's close makes sure that nobody returns while
 * others still need its buffers, then each charges virtual time from the
 * published clocks alone. In no-data mode everything happens but the data
 * movement. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/par_impl.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Elements reduced at a time: the partial sums stay in L1. */
#define PAR_CHUNK 2048

/* memcpy, or with non-temporal stores when stream is set. The caller
 * fences (par_fence) before others may read dst. */
static void par_copy(void *dst, const void *src, size_t bytes, bool stream)
{
#ifdef __SSE2__
    if (stream && bytes >= 256) {
        char *d = dst;
        const char *s = src;
        size_t head = (16 - ((uintptr_t)d & 15)) & 15;
        memcpy(d, s, head);
        d += head, s += head, bytes -= head;
        size_t body = bytes & ~(size_t)63;
        for (size_t i = 0; i < body; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
            __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
            _mm_stream_si128((__m128i *)(d + i), a);
            _mm_stream_si128((__m128i *)(d + i + 16), b);
            _mm_stream_si128((__m128i *)(d + i + 32), c);
            _mm_stream_si128((__m128i *)(d + i + 48), e);
        }
        memcpy(d + body, s + body, bytes - body);
        return;
    }
#endif
    (void)stream;
    memcpy(dst, src, bytes);
}

/* Make streamed stores visible before the meeting that publishes them. */
static void par_fence(bool stream)
{
#ifdef __SSE2__
    if (stream) _mm_sfence();
#endif
    (void)stream;
}

/* ---- argument checks, in one place */

typedef struct {
    bool send, recv; /* buffer needed when its count > 0 */
    bool op, root, peer;
} par_needs_t;

/* In no-data mode float payloads stay behind; int32 ones (token ids,
 * routing decisions, counts: the metadata a dry run's schedule needs) still
 * travel. */
static bool par_skip_payload(const emu_dev_t *dev, emu_dtype_t dtype)
{
    return emu_dev_nodata(dev) && dtype != EMU_DTYPE_INT32;
}

static moemu_status_t par_check(const char *what, par_comm_t *c,
                                const emu_dev_t *dev, const par_slot_t *a,
                                par_needs_t need, size_t sendn, size_t recvn,
                                int *rank)
{
    if (!c || !dev)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: NULL %s", what,
                          c ? "device" : "communicator");
    /* no-data mode moves no float payload: buffers may be NULL */
    if (par_skip_payload(dev, a->dtype)) need.send = need.recv = false;
    int r = par_comm_rank(c, dev);
    if (r < 0)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s: device %d is not a member of this "
                          "communicator of %d",
                          what, emu_dev_rank(dev), c->n);
    if ((unsigned)a->dtype >= EMU_DTYPE__COUNT)
        return moemu_fail(MOEMU_ERR_INVALID, "%s on device %d: bad dtype %d",
                          what, emu_dev_rank(dev), (int)a->dtype);
    if (need.op && (unsigned)a->op >= PAR_OP__COUNT)
        return moemu_fail(MOEMU_ERR_INVALID, "%s on device %d: bad op %d",
                          what, emu_dev_rank(dev), (int)a->op);
    if (need.root && (a->root < 0 || a->root >= c->n))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s on device %d: root %d is not a rank of a "
                          "communicator of %d",
                          what, emu_dev_rank(dev), a->root, c->n);
    if (need.peer && (a->root < 0 || a->root >= c->n))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s on device %d: peer %d is not a rank of a "
                          "communicator of %d",
                          what, emu_dev_rank(dev), a->root, c->n);
    if (need.send && sendn > 0 && !a->send)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s on device %d: NULL send buffer for %zu elements",
                          what, emu_dev_rank(dev), sendn);
    if (need.recv && recvn > 0 && !a->recv)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s on device %d: NULL receive buffer for %zu "
                          "elements",
                          what, emu_dev_rank(dev), recvn);
    *rank = r;
    return MOEMU_OK;
}

/* Members must agree on what they call; every member checks the same
 * published slots, so all of them reach the same verdict. */
static moemu_status_t par_agree(const par_comm_t *c, int r)
{
    const par_slot_t *s0 = &c->slots[0];
    for (int q = 1; q < c->n; q++) {
        const par_slot_t *s = &c->slots[q];
        const char *field = NULL;
        if (s->kind != s0->kind) field = "collective";
        else if (s->dtype != s0->dtype) field = "dtype";
        else if (s->kind != EMU_COLL_ALLTOALL && s->kind != EMU_COLL_BARRIER &&
                 s->count != s0->count)
            field = "count";
        else if ((s->kind == EMU_COLL_ALLREDUCE ||
                  s->kind == EMU_COLL_REDUCE_SCATTER) && s->op != s0->op)
            field = "op";
        else if (s->kind == EMU_COLL_BROADCAST && s->root != s0->root)
            field = "root";
        else if (s->nodata != s0->nodata)
            field = "no-data mode";
        if (field)
            return moemu_fail(
                MOEMU_ERR_INVALID,
                "members of a communicator of %d disagree on the %s (seen by "
                "device %d): rank 0 (device %d) called %s of %zu %s "
                "(op %s, root %d), rank %d (device %d) called %s of %zu %s "
                "(op %s, root %d)",
                c->n, field, c->granks[r], c->granks[0], emu_coll_name(s0->kind),
                s0->count, emu_dtype_name(s0->dtype), par_op_name(s0->op),
                s0->root, q, c->granks[q], emu_coll_name(s->kind), s->count,
                emu_dtype_name(s->dtype), par_op_name(s->op), s->root);
    }
    return MOEMU_OK;
}

/* Publish, meet, agree. On success the member must do its part and call
 * par_leave; on failure nothing moved and the meetings are over. */
static moemu_status_t par_enter(par_comm_t *c, int r, const par_slot_t *a,
                                emu_dev_t *dev)
{
    par_slot_t mine = *a;
    mine.clock = emu_dev_comm_ready(dev);
    mine.nodata = par_skip_payload(dev, a->dtype);
    MOEMU_CHECK(c->tp->gather(c->ts, c, r, &mine));
    moemu_status_t st = par_agree(c, r);
    /* others may still read the slots: leave together (a close that
     * cannot fail keeps the message) */
    if (st != MOEMU_OK) c->tp->close(c->ts, c, r);
    return st;
}

/* The published clocks, copied while they are stable. */
static double *par_clocks(const par_comm_t *c, double *small, size_t nsmall)
{
    double *k = (size_t)c->n <= nsmall ? small
                                       : malloc((size_t)c->n * sizeof *k);
    if (k)
        for (int q = 0; q < c->n; q++) k[q] = c->slots[q].clock;
    return k;
}

/* Close, then, if st is MOEMU_OK, charge dev for a closed-form
 * collective. */
static moemu_status_t par_leave(par_comm_t *c, int r, emu_dev_t *dev,
                                moemu_status_t st, emu_coll_t kind, int root,
                                double bytes)
{
    double small[64];
    double *k = par_clocks(c, small, 64);
    c->tp->close(c->ts, c, r);
    if (st != MOEMU_OK) {
        if (k != small) free(k);
        return st;
    }
    if (!k)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d clocks", c->n);
    emu_coll_charge(dev, kind, c->algo[kind], c->granks, c->n, r, root, k,
                    bytes);
    if (k != small) free(k);
    return MOEMU_OK;
}

/* ---- the plan: who reads and writes what */

static size_t a2a_scount(const par_slot_t *s, int j)
{
    return s->scounts ? s->scounts[j] : s->count;
}

static size_t a2a_sdispl(const par_slot_t *s, int j)
{
    return s->sdispls ? s->sdispls[j] : (size_t)j * s->count;
}

static size_t a2a_rcount(const par_slot_t *s, int j)
{
    return s->rcounts ? s->rcounts[j] : s->count;
}

static size_t a2a_rdispl(const par_slot_t *s, int j)
{
    return s->rdispls ? s->rdispls[j] : (size_t)j * s->count;
}

void par_plan(const par_comm_t *c, int r, int q, par_pair_t *out)
{
    const par_slot_t *s = &c->slots[r];
    size_t n = s->count, p = (size_t)c->n;
    *out = (par_pair_t){{0, 0}, {0, 0}};
    if (s->nodata) return;
    switch (s->kind) {
    case EMU_COLL_ALLREDUCE: { /* r owns slice r of every input and output */
        size_t lo = n * (size_t)r / p, hi = n * (size_t)(r + 1) / p;
        out->get = out->put = (par_span_t){lo, hi - lo};
        break;
    }
    case EMU_COLL_REDUCE_SCATTER:
        out->get = (par_span_t){n * (size_t)r, n};
        break;
    case EMU_COLL_ALLGATHER:
        out->get = (par_span_t){0, n};
        break;
    case EMU_COLL_BROADCAST:
        if (q == s->root) out->get = (par_span_t){0, n};
        break;
    case EMU_COLL_ALLTOALL:
        out->get = (par_span_t){a2a_sdispl(&c->slots[q], r),
                                a2a_scount(&c->slots[q], r)};
        break;
    default:
        break;
    }
}

/* ---- moving r's part through the transport's views */

#define PAR_SMALL 64

typedef struct {
    const void **src;
    void **dst;
    const void *src_small[PAR_SMALL];
    void *dst_small[PAR_SMALL];
} par_views_t;

typedef void par_move_fn(par_comm_t *c, int r, const void *const *src,
                         void *const *dst);

/* Open the views, move r's part with move, release the views. Nothing
 * moves in no-data mode. */
static moemu_status_t par_move(par_comm_t *c, int r, par_move_fn *move)
{
    if (c->slots[r].nodata) return MOEMU_OK;
    par_views_t v;
    bool small = c->n <= PAR_SMALL;
    v.src = small ? v.src_small : malloc((size_t)c->n * sizeof *v.src);
    v.dst = small ? v.dst_small : malloc((size_t)c->n * sizeof *v.dst);
    moemu_status_t st =
        v.src && v.dst ? c->tp->open(c->ts, c, r, v.src, v.dst)
                       : moemu_fail(MOEMU_ERR_NOMEM, "no memory for the views "
                                    "of %d members", c->n);
    if (st == MOEMU_OK) move(c, r, v.src, v.dst);
    if (!small) {
        free(v.src);
        free(v.dst);
    }
    return st;
}

/* ---- reductions: element i of the result is
 * in[0][i] op in[1][i] op ... op in[p-1][i], left to right */

static void par_reduce_f32(float *acc, const void *const *in, int p,
                           size_t off, size_t n, par_op_t op)
{
    memcpy(acc, (const float *)in[0] + off, n * sizeof *acc);
    for (int q = 1; q < p; q++) {
        const float *x = (const float *)in[q] + off;
        if (op == PAR_OP_SUM)
            for (size_t i = 0; i < n; i++) acc[i] += x[i];
        else /* max; a NaN anywhere gives NaN */
            for (size_t i = 0; i < n; i++)
                if (!isnan(acc[i]) && (x[i] > acc[i] || isnan(x[i])))
                    acc[i] = x[i];
    }
}

static void par_reduce_i32(int32_t *acc, const void *const *in, int p,
                           size_t off, size_t n, par_op_t op)
{
    memcpy(acc, (const int32_t *)in[0] + off, n * sizeof *acc);
    for (int q = 1; q < p; q++) {
        const int32_t *x = (const int32_t *)in[q] + off;
        if (op == PAR_OP_SUM) /* wraps like the GPU's, without UB */
            for (size_t i = 0; i < n; i++)
                acc[i] = (int32_t)((uint32_t)acc[i] + (uint32_t)x[i]);
        else
            for (size_t i = 0; i < n; i++)
                if (x[i] > acc[i]) acc[i] = x[i];
    }
}

/* Reduce n elements of the p inputs in[] (as s's dtype and op), chunk by
 * chunk, into each of dst[0..ndst-1]. All inputs of a chunk are read
 * before it is written, so a destination may alias its member's input
 * (in place). */
static void par_reduce(const par_slot_t *s, int p, const void *const *in,
                       size_t n, void *const *dst, int ndst, bool stream)
{
    union {
        float f[PAR_CHUNK];
        int32_t i[PAR_CHUNK];
    } acc;
    for (size_t off = 0; off < n; off += PAR_CHUNK) {
        size_t k = n - off < PAR_CHUNK ? n - off : PAR_CHUNK;
        if (s->dtype == EMU_DTYPE_INT32)
            par_reduce_i32(acc.i, in, p, off, k, s->op);
        else
            par_reduce_f32(acc.f, in, p, off, k, s->op);
        for (int d = 0; d < ndst; d++)
            par_copy((char *)dst[d] + off * PAR_ELEM, &acc, k * PAR_ELEM,
                     stream);
    }
    par_fence(stream);
}

/* Member r's slice of every input, into the same slice of every output:
 * no two members touch the same bytes. */
static void par_allreduce_move(par_comm_t *c, int r, const void *const *src,
                               void *const *dst)
{
    const par_slot_t *s = &c->slots[r];
    par_pair_t pp;
    par_plan(c, r, r, &pp);
    par_reduce(s, c->n, src, pp.get.n, dst, c->n,
               s->count * PAR_ELEM * (size_t)c->n >= c->stream_bytes);
}

moemu_status_t par_allreduce(const void *sendbuf, void *recvbuf, size_t count,
                             emu_dtype_t dtype, par_op_t op, par_comm_t *comm,
                             emu_dev_t *dev)
{
    par_slot_t a = {.kind = EMU_COLL_ALLREDUCE, .send = sendbuf,
                    .recv = recvbuf, .count = count, .dtype = dtype, .op = op,
                    .root = -1};
    int r;
    MOEMU_CHECK(par_check("all-reduce", comm, dev, &a,
                          (par_needs_t){.send = true, .recv = true, .op = true},
                          count, count, &r));
    MOEMU_CHECK(par_enter(comm, r, &a, dev));
    moemu_status_t st = par_move(comm, r, par_allreduce_move);
    return par_leave(comm, r, dev, st, EMU_COLL_ALLREDUCE, -1,
                     (double)count * emu_dtype_bytes(dtype));
}

static void par_reduce_scatter_move(par_comm_t *c, int r,
                                    const void *const *src, void *const *dst)
{
    const par_slot_t *s = &c->slots[r];
    void *out = s->recv;
    (void)dst;
    par_reduce(s, c->n, src, s->count, &out, 1,
               s->count * PAR_ELEM * (size_t)c->n >= c->stream_bytes);
}

moemu_status_t par_reduce_scatter(const void *sendbuf, void *recvbuf,
                                  size_t recvcount, emu_dtype_t dtype,
                                  par_op_t op, par_comm_t *comm,
                                  emu_dev_t *dev)
{
    par_slot_t a = {.kind = EMU_COLL_REDUCE_SCATTER, .send = sendbuf,
                    .recv = recvbuf, .count = recvcount, .dtype = dtype,
                    .op = op, .root = -1};
    int r;
    MOEMU_CHECK(par_check("reduce-scatter", comm, dev, &a,
                          (par_needs_t){.send = true, .recv = true, .op = true},
                          comm ? recvcount * (size_t)comm->n : 0, recvcount,
                          &r));
    MOEMU_CHECK(par_enter(comm, r, &a, dev));
    moemu_status_t st = par_move(comm, r, par_reduce_scatter_move);
    return par_leave(comm, r, dev, st, EMU_COLL_REDUCE_SCATTER, -1,
                     (double)recvcount * comm->n * emu_dtype_bytes(dtype));
}

/* Every block into our own buffer; in place, block r is already there. */
static void par_allgather_move(par_comm_t *c, int r, const void *const *src,
                               void *const *dst)
{
    const par_slot_t *s = &c->slots[r];
    size_t blk = s->count * PAR_ELEM;
    bool stream = blk * (size_t)c->n * (size_t)c->n >= c->stream_bytes;
    (void)dst;
    for (int q = 0; q < c->n; q++) {
        char *to = (char *)s->recv + (size_t)q * blk;
        if (blk && to != src[q]) par_copy(to, src[q], blk, stream);
    }
    par_fence(stream);
}

moemu_status_t par_allgather(const void *sendbuf, void *recvbuf,
                             size_t sendcount, emu_dtype_t dtype,
                             par_comm_t *comm, emu_dev_t *dev)
{
    return par_allgather_charged(sendbuf, recvbuf, sendcount, sendcount, dtype, comm, dev);
}

moemu_status_t par_allgather_charged(const void *sendbuf, void *recvbuf, size_t sendcount,
                                     size_t charged, emu_dtype_t dtype, par_comm_t *comm,
                                     emu_dev_t *dev)
{
    if (charged > sendcount)
        return moemu_fail(MOEMU_ERR_INVALID, "all-gather charged for %zu of %zu elements",
                          charged, sendcount);
    par_slot_t a = {.kind = EMU_COLL_ALLGATHER, .send = sendbuf,
                    .recv = recvbuf, .count = sendcount, .dtype = dtype,
                    .root = -1};
    int r;
    MOEMU_CHECK(par_check("all-gather", comm, dev, &a,
                          (par_needs_t){.send = true, .recv = true}, sendcount,
                          comm ? sendcount * (size_t)comm->n : 0, &r));
    MOEMU_CHECK(par_enter(comm, r, &a, dev));
    moemu_status_t st = par_move(comm, r, par_allgather_move);
    return par_leave(comm, r, dev, st, EMU_COLL_ALLGATHER, -1,
                     (double)charged * comm->n * emu_dtype_bytes(dtype));
}

static void par_broadcast_move(par_comm_t *c, int r, const void *const *src,
                               void *const *dst)
{
    const par_slot_t *s = &c->slots[r];
    const void *from = src[s->root];
    bool stream = s->count * PAR_ELEM * (size_t)c->n >= c->stream_bytes;
    (void)dst;
    if (s->count && s->recv != from)
        par_copy(s->recv, from, s->count * PAR_ELEM, stream);
    par_fence(stream);
}

moemu_status_t par_broadcast(const void *sendbuf, void *recvbuf, size_t count,
                             emu_dtype_t dtype, int root, par_comm_t *comm,
                             emu_dev_t *dev)
{
    par_slot_t a = {.kind = EMU_COLL_BROADCAST, .send = sendbuf,
                    .recv = recvbuf, .count = count, .dtype = dtype,
                    .root = root};
    int r;
    bool is_root = comm && dev && par_comm_rank(comm, dev) == root;
    MOEMU_CHECK(par_check("broadcast", comm, dev, &a,
                          (par_needs_t){.send = is_root, .recv = true,
                                        .root = true},
                          count, count, &r));
    MOEMU_CHECK(par_enter(comm, r, &a, dev));
    moemu_status_t st = par_move(comm, r, par_broadcast_move);
    return par_leave(comm, r, dev, st, EMU_COLL_BROADCAST, root,
                     (double)count * emu_dtype_bytes(dtype));
}

/* ---- all-to-all */

/* Members whose bytes matrix fits on the stack. */
#define PAR_A2A_SMALL 16

/* Every member checks the whole matrix: all reach the same verdict. With
 * bytes (or NULL), the bytes from member i to member j at [i * p + j],
 * for the charge, in the same pass. */
static moemu_status_t par_a2a_agree(const par_comm_t *c, const char *what, double *bytes)
{
    size_t p = (size_t)c->n;
    double w = emu_dtype_bytes(c->slots[0].dtype);
    for (size_t i = 0; i < p; i++) {
        const par_slot_t *s = &c->slots[i];
        for (size_t j = 0; j < p; j++) {
            size_t n = a2a_scount(s, (int)j);
            if (n != a2a_rcount(&c->slots[j], (int)i))
                return moemu_fail(MOEMU_ERR_INVALID,
                                  "%s: rank %zu (device %d) sends %zu elements "
                                  "to rank %zu (device %d), which expects %zu",
                                  what, i, c->granks[i], n, j, c->granks[j],
                                  a2a_rcount(&c->slots[j], (int)i));
            if (bytes) bytes[i * p + j] = w * n;
        }
    }
    return MOEMU_OK;
}

/* Pull what each member sends us. */
static void par_a2a_move(par_comm_t *c, int r, const void *const *src,
                         void *const *dst)
{
    const par_slot_t *s = &c->slots[r];
    size_t all = 0;
    for (int i = 0; i < c->n; i++)
        for (int j = 0; j < c->n; j++) all += a2a_scount(&c->slots[i], j);
    bool stream = all * PAR_ELEM >= c->stream_bytes;
    (void)dst;
    for (int q = 0; q < c->n; q++) {
        size_t n = a2a_scount(&c->slots[q], r);
        if (n)
            par_copy((char *)s->recv + a2a_rdispl(s, q) * PAR_ELEM, src[q],
                     n * PAR_ELEM, stream);
    }
    par_fence(stream);
}

static moemu_status_t par_a2a(par_slot_t *a, par_comm_t *comm, emu_dev_t *dev,
                              const char *what, bool charged)
{
    int r;
    size_t sendn = 0, recvn = 0;
    for (int q = 0; comm && q < comm->n; q++) {
        sendn += a2a_scount(a, q);
        recvn += a2a_rcount(a, q);
    }
    MOEMU_CHECK(par_check(what, comm, dev, a,
                          (par_needs_t){.send = true, .recv = true}, sendn,
                          recvn, &r));
    if (a->send && a->send == a->recv && sendn)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s on device %d: send and receive buffers are the "
                          "same (all-to-all is never in place)",
                          what, emu_dev_rank(dev));
    MOEMU_CHECK(par_enter(comm, r, a, dev));
    /* the usual groups' tables on the stack: every member of every
     * all-to-all makes them */
    double small[64], bsmall[PAR_A2A_SMALL * PAR_A2A_SMALL], *clocks = NULL, *bytes = NULL;
    moemu_status_t st = MOEMU_OK;
    if (charged) {
        size_t p = (size_t)comm->n;
        bytes = p <= PAR_A2A_SMALL ? bsmall : malloc(p * p * sizeof *bytes);
        clocks = par_clocks(comm, small, 64);
        if (!bytes || !clocks)
            st = moemu_fail(MOEMU_ERR_NOMEM, "%s: no memory for %d members",
                            what, comm->n);
    }
    if (st == MOEMU_OK) st = par_a2a_agree(comm, what, bytes);
    if (st == MOEMU_OK) st = par_move(comm, r, par_a2a_move);
    comm->tp->close(comm->ts, comm, r);
    if (st == MOEMU_OK && charged)
        emu_coll_alltoall(dev, comm->granks, comm->n, r, clocks, bytes);
    if (bytes != bsmall) free(bytes);
    if (clocks != small) free(clocks);
    return st;
}

/* Equal blocks, charged or in band. */
static moemu_status_t par_a2a_equal(const void *sendbuf, void *recvbuf, size_t count,
                                    emu_dtype_t dtype, par_comm_t *comm, emu_dev_t *dev,
                                    bool charged)
{
    par_slot_t a = {.kind = EMU_COLL_ALLTOALL, .send = sendbuf,
                    .recv = recvbuf, .count = count, .dtype = dtype,
                    .root = -1};
    return par_a2a(&a, comm, dev, charged ? "all-to-all" : "all-to-all (in band)", charged);
}

moemu_status_t par_alltoall(const void *sendbuf, void *recvbuf, size_t count,
                            emu_dtype_t dtype, par_comm_t *comm,
                            emu_dev_t *dev)
{
    return par_a2a_equal(sendbuf, recvbuf, count, dtype, comm, dev, true);
}

moemu_status_t par_alltoall_inband(const void *sendbuf, void *recvbuf, size_t count,
                                   emu_dtype_t dtype, par_comm_t *comm, emu_dev_t *dev)
{
    return par_a2a_equal(sendbuf, recvbuf, count, dtype, comm, dev, false);
}

moemu_status_t par_alltoallv(const void *sendbuf, const size_t *sendcounts,
                             const size_t *sdispls, void *recvbuf,
                             const size_t *recvcounts, const size_t *rdispls,
                             emu_dtype_t dtype, par_comm_t *comm,
                             emu_dev_t *dev)
{
    if (!sendcounts || !sdispls || !recvcounts || !rdispls)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "all-to-all-v: NULL counts or displacements");
    par_slot_t a = {.kind = EMU_COLL_ALLTOALL, .send = sendbuf,
                    .recv = recvbuf, .dtype = dtype, .root = -1,
                    .scounts = sendcounts, .sdispls = sdispls,
                    .rcounts = recvcounts, .rdispls = rdispls};
    return par_a2a(&a, comm, dev, "all-to-all-v", true);
}

/* ---- barrier and point to point */

moemu_status_t par_barrier(par_comm_t *comm, emu_dev_t *dev)
{
    par_slot_t a = {.kind = EMU_COLL_BARRIER, .dtype = EMU_DTYPE_FP32,
                    .root = -1};
    int r;
    MOEMU_CHECK(par_check("barrier", comm, dev, &a, (par_needs_t){0}, 0, 0, &r));
    MOEMU_CHECK(par_enter(comm, r, &a, dev));
    return par_leave(comm, r, dev, MOEMU_OK, EMU_COLL_BARRIER, -1, 0);
}

/* A message from member r with a copy of buf (none in no-data mode), or
 * NULL. */
static par_msg_t *par_msg_new(int r, const void *buf, size_t count,
                              emu_dtype_t dtype, bool nodata)
{
    par_msg_t *m = malloc(sizeof *m);
    void *data = count && !nodata ? malloc(count * PAR_ELEM) : NULL;
    if (!m || (count && !nodata && !data)) {
        free(m);
        free(data);
        return NULL;
    }
    if (data) memcpy(data, buf, count * PAR_ELEM);
    *m = (par_msg_t){.src = r, .count = count, .dtype = dtype,
                     .nodata = nodata, .data = data};
    return m;
}

moemu_status_t par_send(const void *buf, size_t count, emu_dtype_t dtype,
                        int peer, par_comm_t *comm, emu_dev_t *dev)
{
    par_slot_t a = {.send = buf, .count = count, .dtype = dtype, .root = peer};
    int r;
    MOEMU_CHECK(par_check("send", comm, dev, &a,
                          (par_needs_t){.send = true, .peer = true}, count, 0,
                          &r));
    par_msg_t *m = par_msg_new(r, buf, count, dtype,
                               par_skip_payload(dev, dtype));
    if (!m)
        return moemu_fail(MOEMU_ERR_NOMEM,
                          "send on device %d: no host memory for %zu elements",
                          emu_dev_rank(dev), count);
    m->t = emu_p2p_send(dev, comm->granks[peer],
                        (double)count * emu_dtype_bytes(dtype));
    return comm->tp->post(comm->ts, comm, r, peer, m);
}

/* The message m must be what r expects from peer. */
static moemu_status_t par_msg_match(const par_comm_t *c, int r, int peer,
                                    const par_msg_t *m, size_t count,
                                    emu_dtype_t dtype, bool nodata)
{
    if (m->count != count || m->dtype != dtype)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "device %d receives %zu %s from device %d, which "
                          "sent %zu %s",
                          c->granks[r], count, emu_dtype_name(dtype),
                          c->granks[peer], m->count, emu_dtype_name(m->dtype));
    if (m->nodata != nodata)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "device %d receives %s from device %d, which sent "
                          "%s (both must be in the same mode)",
                          c->granks[r], nodata ? "in no-data mode" : "data",
                          c->granks[peer],
                          m->nodata ? "in no-data mode" : "data");
    return MOEMU_OK;
}

moemu_status_t par_recv(void *buf, size_t count, emu_dtype_t dtype, int peer,
                        par_comm_t *comm, emu_dev_t *dev)
{
    par_slot_t a = {.recv = buf, .count = count, .dtype = dtype, .root = peer};
    int r;
    MOEMU_CHECK(par_check("recv", comm, dev, &a,
                          (par_needs_t){.recv = true, .peer = true}, 0, count,
                          &r));
    par_msg_t *m;
    MOEMU_CHECK(comm->tp->take(comm->ts, comm, r, peer, &m));
    bool nodata = par_skip_payload(dev, dtype);
    moemu_status_t st = par_msg_match(comm, r, peer, m, count, dtype, nodata);
    if (st == MOEMU_OK) {
        if (count && !nodata) memcpy(buf, m->data, count * PAR_ELEM);
        emu_p2p_recv(dev, comm->granks[peer], m->t);
    }
    par_msg_free(m);
    return st;
}
