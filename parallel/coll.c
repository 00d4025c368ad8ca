/* Collectives through shared memory. Each one is two meetings: members
 * publish their buffers and clocks, meet, move data straight between each
 * other's buffers (every element written once, by one member), meet again
 * so that nobody returns while others still touch its buffers, then
 * charge virtual time from the published clocks alone. In no-data mode
 * everything happens but the data movement. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/par_impl.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Host bytes per element: float or int32_t. */
#define PAR_ELEM 4
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
    c->slots[r] = *a;
    c->slots[r].clock = emu_dev_clock(dev);
    c->slots[r].nodata = par_skip_payload(dev, a->dtype);
    MOEMU_CHECK(par_meet(c, r, true));
    moemu_status_t st = par_agree(c, r);
    /* others may still read the slots: leave together (a meeting that
     * cannot fail keeps the message) */
    if (st != MOEMU_OK) par_meet(c, r, false);
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

/* Second meeting, then charge dev for a closed-form collective. */
static moemu_status_t par_leave(par_comm_t *c, int r, emu_dev_t *dev,
                                emu_coll_t kind, int root, double bytes)
{
    double small[64];
    double *k = par_clocks(c, small, 64);
    par_meet(c, r, false);
    if (!k)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d clocks", c->n);
    emu_coll_charge(dev, kind, c->algo[kind], c->granks, c->n, r, root, k,
                    bytes);
    if (k != small) free(k);
    return MOEMU_OK;
}

/* ---- reductions: element i of the result is
 * in[0][i] op in[1][i] op ... op in[p-1][i], left to right */

static void par_reduce_f32(float *acc, const par_slot_t *slots, int p,
                           size_t off, size_t n, par_op_t op)
{
    memcpy(acc, (const float *)slots[0].send + off, n * sizeof *acc);
    for (int q = 1; q < p; q++) {
        const float *x = (const float *)slots[q].send + off;
        if (op == PAR_OP_SUM)
            for (size_t i = 0; i < n; i++) acc[i] += x[i];
        else /* max; a NaN anywhere gives NaN */
            for (size_t i = 0; i < n; i++)
                if (!isnan(acc[i]) && (x[i] > acc[i] || isnan(x[i])))
                    acc[i] = x[i];
    }
}

static void par_reduce_i32(int32_t *acc, const par_slot_t *slots, int p,
                           size_t off, size_t n, par_op_t op)
{
    memcpy(acc, (const int32_t *)slots[0].send + off, n * sizeof *acc);
    for (int q = 1; q < p; q++) {
        const int32_t *x = (const int32_t *)slots[q].send + off;
        if (op == PAR_OP_SUM) /* wraps like the GPU's, without UB */
            for (size_t i = 0; i < n; i++)
                acc[i] = (int32_t)((uint32_t)acc[i] + (uint32_t)x[i]);
        else
            for (size_t i = 0; i < n; i++)
                if (x[i] > acc[i]) acc[i] = x[i];
    }
}

/* Reduce elements [lo, hi) of the inputs; chunk by chunk, write the result
 * at offset lo + dst_off of every destination in dst[0..ndst-1]. All
 * inputs of a chunk are read before it is written, so a destination may
 * alias its member's input (in place). */
static void par_reduce_range(const par_comm_t *c, size_t lo, size_t hi,
                             void *const *dst, int ndst, ptrdiff_t dst_shift,
                             bool stream)
{
    const par_slot_t *s = &c->slots[0];
    union {
        float f[PAR_CHUNK];
        int32_t i[PAR_CHUNK];
    } acc;
    for (size_t off = lo; off < hi; off += PAR_CHUNK) {
        size_t n = hi - off < PAR_CHUNK ? hi - off : PAR_CHUNK;
        if (s->dtype == EMU_DTYPE_INT32)
            par_reduce_i32(acc.i, c->slots, c->n, off, n, s->op);
        else
            par_reduce_f32(acc.f, c->slots, c->n, off, n, s->op);
        for (int d = 0; d < ndst; d++)
            par_copy((char *)dst[d] + ((ptrdiff_t)off + dst_shift) * PAR_ELEM,
                     &acc, n * PAR_ELEM, stream);
    }
    par_fence(stream);
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
    int p = comm->n;
    void *small[64], **dst = p <= 64 ? small : malloc((size_t)p * sizeof *dst);
    if (!dst)
        return moemu_fail(MOEMU_ERR_NOMEM, "all-reduce: no memory for %d "
                                           "members", p);
    moemu_status_t st = par_enter(comm, r, &a, dev);
    if (st == MOEMU_OK) {
        /* member r owns slice r: it reads every input there and writes
         * every output there, so no two members touch the same bytes */
        size_t lo = count * (size_t)r / (size_t)p;
        size_t hi = count * (size_t)(r + 1) / (size_t)p;
        for (int q = 0; q < p; q++) dst[q] = comm->slots[q].recv;
        if (!comm->slots[r].nodata)
            par_reduce_range(comm, lo, hi, dst, p, 0,
                             count * PAR_ELEM * (size_t)p >= comm->stream_bytes);
        st = par_leave(comm, r, dev, EMU_COLL_ALLREDUCE, -1,
                       (double)count * emu_dtype_size(dtype));
    }
    if (dst != small) free(dst);
    return st;
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
    size_t lo = recvcount * (size_t)r;
    void *dst = recvbuf;
    if (!comm->slots[r].nodata)
        par_reduce_range(comm, lo, lo + recvcount, &dst, 1, -(ptrdiff_t)lo,
                         recvcount * PAR_ELEM * (size_t)comm->n >=
                             comm->stream_bytes);
    return par_leave(comm, r, dev, EMU_COLL_REDUCE_SCATTER, -1,
                     (double)recvcount * comm->n * emu_dtype_size(dtype));
}

moemu_status_t par_allgather(const void *sendbuf, void *recvbuf,
                             size_t sendcount, emu_dtype_t dtype,
                             par_comm_t *comm, emu_dev_t *dev)
{
    par_slot_t a = {.kind = EMU_COLL_ALLGATHER, .send = sendbuf,
                    .recv = recvbuf, .count = sendcount, .dtype = dtype,
                    .root = -1};
    int r;
    MOEMU_CHECK(par_check("all-gather", comm, dev, &a,
                          (par_needs_t){.send = true, .recv = true}, sendcount,
                          comm ? sendcount * (size_t)comm->n : 0, &r));
    MOEMU_CHECK(par_enter(comm, r, &a, dev));
    /* pull every block into our own buffer; in place, block r is already
     * there */
    size_t blk = sendcount * PAR_ELEM;
    bool stream = blk * (size_t)comm->n * (size_t)comm->n >= comm->stream_bytes;
    for (int q = 0; q < comm->n && !comm->slots[r].nodata; q++) {
        char *to = (char *)recvbuf + (size_t)q * blk;
        if (blk && to != comm->slots[q].send)
            par_copy(to, comm->slots[q].send, blk, stream);
    }
    par_fence(stream);
    return par_leave(comm, r, dev, EMU_COLL_ALLGATHER, -1,
                     (double)sendcount * comm->n * emu_dtype_size(dtype));
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
    const void *from = comm->slots[root].send;
    bool stream = count * PAR_ELEM * (size_t)comm->n >= comm->stream_bytes;
    if (count && recvbuf != from && !comm->slots[r].nodata)
        par_copy(recvbuf, from, count * PAR_ELEM, stream);
    par_fence(stream);
    return par_leave(comm, r, dev, EMU_COLL_BROADCAST, root,
                     (double)count * emu_dtype_size(dtype));
}

/* ---- all-to-all */

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

static moemu_status_t par_a2a(par_slot_t *a, par_comm_t *comm, emu_dev_t *dev,
                              const char *what)
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
    int p = comm->n;
    if (a->send && a->send == a->recv && sendn)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s on device %d: send and receive buffers are the "
                          "same (all-to-all is never in place)",
                          what, emu_dev_rank(dev));
    MOEMU_CHECK(par_enter(comm, r, a, dev));

    /* every member checks the whole matrix: all reach the same verdict */
    moemu_status_t st = MOEMU_OK;
    for (int i = 0; i < p && st == MOEMU_OK; i++)
        for (int j = 0; j < p; j++)
            if (a2a_scount(&comm->slots[i], j) != a2a_rcount(&comm->slots[j], i)) {
                st = moemu_fail(MOEMU_ERR_INVALID,
                                "%s: rank %d (device %d) sends %zu elements "
                                "to rank %d (device %d), which expects %zu",
                                what, i, comm->granks[i],
                                a2a_scount(&comm->slots[i], j), j,
                                comm->granks[j], a2a_rcount(&comm->slots[j], i));
                break;
            }
    double *bytes = NULL;
    double small[64];
    double *clocks = NULL;
    if (st == MOEMU_OK) {
        bytes = malloc((size_t)p * (size_t)p * sizeof *bytes);
        clocks = par_clocks(comm, small, 64);
        if (!bytes || !clocks)
            st = moemu_fail(MOEMU_ERR_NOMEM, "%s: no memory for %d members",
                            what, p);
    }
    if (st == MOEMU_OK) {
        double w = (double)emu_dtype_size(a->dtype);
        for (int i = 0; i < p; i++)
            for (int j = 0; j < p; j++)
                bytes[(size_t)i * p + j] = w * a2a_scount(&comm->slots[i], j);
        /* pull what each member sends us */
        double all = 0;
        for (size_t i = 0; i < (size_t)p * p; i++) all += bytes[i];
        bool stream = all / w * PAR_ELEM >= (double)comm->stream_bytes;
        for (int q = 0; q < p && !comm->slots[r].nodata; q++) {
            const par_slot_t *s = &comm->slots[q];
            size_t n = a2a_scount(s, r);
            if (n)
                par_copy((char *)a->recv + a2a_rdispl(a, q) * PAR_ELEM,
                         (const char *)s->send + a2a_sdispl(s, r) * PAR_ELEM,
                         n * PAR_ELEM, stream);
        }
        par_fence(stream);
    }
    par_meet(comm, r, false);
    if (st == MOEMU_OK)
        emu_coll_alltoall(dev, comm->granks, p, r, clocks, bytes);
    free(bytes);
    if (clocks != small) free(clocks);
    return st;
}

moemu_status_t par_alltoall(const void *sendbuf, void *recvbuf, size_t count,
                            emu_dtype_t dtype, par_comm_t *comm,
                            emu_dev_t *dev)
{
    par_slot_t a = {.kind = EMU_COLL_ALLTOALL, .send = sendbuf,
                    .recv = recvbuf, .count = count, .dtype = dtype,
                    .root = -1};
    return par_a2a(&a, comm, dev, "all-to-all");
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
    return par_a2a(&a, comm, dev, "all-to-all-v");
}

/* ---- barrier and point to point */

moemu_status_t par_barrier(par_comm_t *comm, emu_dev_t *dev)
{
    par_slot_t a = {.kind = EMU_COLL_BARRIER, .dtype = EMU_DTYPE_FP32,
                    .root = -1};
    int r;
    MOEMU_CHECK(par_check("barrier", comm, dev, &a, (par_needs_t){0}, 0, 0, &r));
    MOEMU_CHECK(par_enter(comm, r, &a, dev));
    return par_leave(comm, r, dev, EMU_COLL_BARRIER, -1, 0);
}

moemu_status_t par_send(const void *buf, size_t count, emu_dtype_t dtype,
                        int peer, par_comm_t *comm, emu_dev_t *dev)
{
    par_slot_t a = {.send = buf, .count = count, .dtype = dtype, .root = peer};
    int r;
    MOEMU_CHECK(par_check("send", comm, dev, &a,
                          (par_needs_t){.send = true, .peer = true}, count, 0,
                          &r));
    bool nodata = par_skip_payload(dev, dtype); /* no payload */
    par_msg_t *m = malloc(sizeof *m);
    void *data = count && !nodata ? malloc(count * PAR_ELEM) : NULL;
    if (!m || (count && !nodata && !data)) {
        free(m);
        free(data);
        return moemu_fail(MOEMU_ERR_NOMEM,
                          "send on device %d: no host memory for %zu elements",
                          emu_dev_rank(dev), count);
    }
    if (data) memcpy(data, buf, count * PAR_ELEM);
    *m = (par_msg_t){.src = r, .count = count, .dtype = dtype,
                     .nodata = nodata, .data = data,
                     .t = emu_p2p_send(dev, comm->granks[peer],
                                       (double)count * emu_dtype_size(dtype))};
    emu_sync_lock(comm->sync);
    if (comm->mbox_tail[peer]) comm->mbox_tail[peer]->next = m;
    else comm->mbox_head[peer] = m;
    comm->mbox_tail[peer] = m;
    emu_sync_broadcast(comm->sync);
    emu_sync_unlock(comm->sync);
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
    par_msg_t *m = NULL;
    moemu_status_t st = MOEMU_OK;
    emu_sync_lock(comm->sync);
    for (;;) {
        par_msg_t *prev = NULL;
        for (m = comm->mbox_head[r]; m && m->src != peer; m = m->next) prev = m;
        if (m) { /* unlink the first message from peer */
            if (prev) prev->next = m->next;
            else comm->mbox_head[r] = m->next;
            if (comm->mbox_tail[r] == m) comm->mbox_tail[r] = prev;
            break;
        }
        if (emu_cluster_aborting(comm->cluster)) {
            st = moemu_fail(MOEMU_ERR_PEER,
                            "stopped: another device failed while device %d "
                            "waited for a message from device %d",
                            comm->granks[r], comm->granks[peer]);
            break;
        }
        if (emu_dev_done(comm->devs[peer])) {
            st = moemu_fail(MOEMU_ERR_INVALID,
                            "device %d waits for a message from device %d, "
                            "which returned without sending it",
                            comm->granks[r], comm->granks[peer]);
            break;
        }
        emu_sync_wait(comm->sync);
    }
    emu_sync_unlock(comm->sync);
    if (st != MOEMU_OK) return st;
    bool nodata = par_skip_payload(dev, dtype);
    if (m->count != count || m->dtype != dtype)
        st = moemu_fail(MOEMU_ERR_INVALID,
                        "device %d receives %zu %s from device %d, which sent "
                        "%zu %s",
                        comm->granks[r], count, emu_dtype_name(dtype),
                        comm->granks[peer], m->count, emu_dtype_name(m->dtype));
    else if (m->nodata != nodata)
        st = moemu_fail(MOEMU_ERR_INVALID,
                        "device %d receives %s from device %d, which sent "
                        "%s (both must be in the same mode)",
                        comm->granks[r],
                        nodata ? "in no-data mode" : "data",
                        comm->granks[peer],
                        m->nodata ? "in no-data mode" : "data");
    else {
        if (count && !nodata) memcpy(buf, m->data, count * PAR_ELEM);
        emu_p2p_recv(dev, comm->granks[peer], m->t);
    }
    free(m->data);
    free(m);
    return st;
}
