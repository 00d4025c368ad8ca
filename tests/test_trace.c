/* emu: the trace of each device's virtual timeline (spans in memory and the
 * Chrome trace-event file, written through outfile as moemu writes it),
 * and no-data mode's spans against data's. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "emu/emu.h"
#include "engine/tools/outfile.h" /* the file: moemu's one output writer */
#include "parallel/par.h"

static const emu_spec_t spec = {
    .peak_flops = 100e12, .mfu = 0.5, .mem_bw = 1e12, .bw_util = 0.5,
    .mem_capacity = 1e9, .launch_s = 1e-6};
/* 6 devices: node 0 holds 0..3, node 1 holds 4 and 5 */
static const emu_topo_t topo4 = {.devices_per_node = 4, .intra_bw = 100e9,
                                 .intra_lat = 1e-6, .inter_bw = 10e9,
                                 .inter_lat = 10e-6};
#define NDEV 6
#define NBUF 4096

#define ASSERT_NEAR(a, b)                                                      \
    cr_assert(fabs((double)(a) - (double)(b)) <= 1e-12 * fabs((double)(b)) + 1e-18, \
              "%s = %.17g, expected %.17g", #a, (double)(a), (double)(b))

/* A scratch directory for the test's files; removed by the caller. */
static void scratch_dir(char dir[64])
{
    snprintf(dir, 64, "/tmp/moemu-trace-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static int dir_entries(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1) n = -1;
        pclose(p);
    }
    return n;
}

static void rm_dir(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* ---- spans in memory */

Test(spans, kernels_tile_the_clock)
{
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&spec, 3, false, &d), MOEMU_OK);
    cr_assert_not(emu_dev_tracing(d));
    emu_charge(d, EMU_KERNEL_GEMM, 1e12, 1e6); /* before tracing: not kept */
    cr_assert_eq(emu_dev_span_count(d), 0);
    cr_assert_eq(emu_dev_layer(d), -1);

    emu_dev_set_trace(d, true);
    double t0 = emu_dev_clock(d);
    emu_charge(d, EMU_KERNEL_EMBED, 0, 4e6);
    emu_dev_set_layer(d, 7);
    emu_charge(d, EMU_KERNEL_ATTN, 3e11, 1e6);
    emu_charge(d, EMU_KERNEL_EXPERT, 1e6, 1e9);
    emu_dev_set_layer(d, -5); /* any negative: none */
    cr_assert_eq(emu_dev_layer(d), -1);
    emu_charge(d, EMU_KERNEL_ELEMWISE, 1, 1);

    cr_assert_eq(emu_dev_span_count(d), 4);
    cr_assert_null(emu_dev_span(d, 4));
    static const emu_kernel_t kinds[] = {EMU_KERNEL_EMBED, EMU_KERNEL_ATTN,
                                         EMU_KERNEL_EXPERT,
                                         EMU_KERNEL_ELEMWISE};
    static const int layers[] = {-1, 7, 7, -1};
    static const double flops[] = {0, 3e11, 1e6, 1}, bytes[] = {4e6, 1e6, 1e9, 1};
    double at = t0;
    for (size_t i = 0; i < 4; i++) {
        const emu_span_t *s = emu_dev_span(d, i);
        cr_assert_eq(s->cat, EMU_SPAN_KERNEL);
        cr_assert_eq(s->kind, kinds[i]);
        cr_assert_eq(s->layer, layers[i]);
        cr_assert_eq(s->start, at, "span %zu starts at %.17g, not %.17g", i,
                     s->start, at);
        ASSERT_NEAR(s->end - s->start, emu_kernel_time(&spec, flops[i], bytes[i]));
        cr_assert_eq(s->flops, flops[i]);
        cr_assert_eq(s->bytes, bytes[i]);
        cr_assert_str_eq(emu_span_name(s), emu_kernel_name(kinds[i]));
        at = s->end;
    }
    cr_assert_eq(at, emu_dev_clock(d)); /* exactly */
    cr_assert_str_eq(emu_span_cat_name(EMU_SPAN_KERNEL), "kernel");
    cr_assert_str_eq(emu_span_cat_name(EMU_SPAN_COMM), "comm");
    cr_assert_str_eq(emu_span_cat_name(EMU_SPAN_IDLE), "idle");

    /* off again: recorded spans stay, nothing new */
    emu_dev_set_trace(d, false);
    emu_charge(d, EMU_KERNEL_GEMM, 1, 1);
    cr_assert_eq(emu_dev_span_count(d), 4);
    emu_dev_destroy(d);
}

/* ---- a program with kernels, every collective and sends, staggered so
 * that devices wait for each other */

typedef struct {
    par_comm_t *world, *node1; /* node1: devices 4 and 5 */
    float *buf[NDEV][2];       /* NULL in the NULL-buffer variant */
    bool skip_layers;
} prog_t;

static moemu_status_t prog_fn(emu_dev_t *dev, void *arg)
{
    prog_t *P = arg;
    int r = emu_dev_rank(dev), p = NDEV;
    float *a = P->buf[r][0], *b = P->buf[r][1];
    par_comm_t *w = P->world;

    emu_dev_set_layer(dev, 0);
    emu_charge(dev, EMU_KERNEL_GEMM, 1e9 * (r + 1), 1e6);
    MOEMU_CHECK(par_allreduce(a, b, 1000, EMU_DTYPE_BF16, PAR_OP_SUM, w, dev));
    emu_charge(dev, EMU_KERNEL_ATTN, 5e8 * (p - r), 2e6);
    MOEMU_CHECK(par_allgather(a, b, 100, EMU_DTYPE_FP16, w, dev));
    emu_dev_set_layer(dev, 1);
    emu_charge(dev, EMU_KERNEL_ROUTER, 1e6, 1e5 * (1 + r % 3));
    MOEMU_CHECK(par_reduce_scatter(b, a, 100, EMU_DTYPE_FP32, PAR_OP_MAX, w, dev));
    MOEMU_CHECK(par_broadcast(a, b, 500, EMU_DTYPE_BF16, 4, w, dev));
    emu_charge(dev, EMU_KERNEL_EXPERT, 2e9 * ((r * 7) % 5), 3e6);
    MOEMU_CHECK(par_alltoall(a, b, 50, EMU_DTYPE_BF16, w, dev));
    size_t sc[NDEV], sd[NDEV], rc[NDEV], rd[NDEV], so = 0, ro = 0;
    for (int q = 0; q < p; q++) {
        sc[q] = (size_t)((r + 2 * q) % 4) * 40; /* to q */
        rc[q] = (size_t)((q + 2 * r) % 4) * 40; /* what q sends us */
        sd[q] = so, rd[q] = ro;
        so += sc[q], ro += rc[q];
    }
    MOEMU_CHECK(par_alltoallv(a, sc, sd, b, rc, rd, EMU_DTYPE_BF16, w, dev));
    if (r >= 4)
        MOEMU_CHECK(par_allreduce(a, a, 300, EMU_DTYPE_FP32, PAR_OP_SUM,
                                  P->node1, dev));
    if (!P->skip_layers) emu_dev_set_layer(dev, 2);
    emu_charge(dev, EMU_KERNEL_NORM, 0, 1e6 * (r + 1));
    MOEMU_CHECK(par_send(a, 200, EMU_DTYPE_BF16, (r + 1) % p, w, dev));
    MOEMU_CHECK(par_recv(b, 200, EMU_DTYPE_BF16, (r + p - 1) % p, w, dev));
    emu_dev_set_layer(dev, -1);
    MOEMU_CHECK(par_barrier(w, dev));
    emu_charge(dev, EMU_KERNEL_ELEMWISE, 1e6, 1e6);
    return MOEMU_OK;
}

typedef struct {
    emu_cluster_t *c;
    prog_t P;
} world_t;

static void world_init(world_t *W, bool trace, bool nodata, bool null_bufs)
{
    emu_cluster_opts_t o = {.no_pin = true, .trace = trace, .nodata = nodata};
    cr_assert_eq(emu_cluster_create(&spec, &topo4, NDEV, &o, &W->c), MOEMU_OK);
    memset(&W->P, 0, sizeof W->P);
    cr_assert_eq(par_comm_create_world(W->c, &W->P.world), MOEMU_OK);
    int n1[] = {4, 5};
    cr_assert_eq(par_comm_create(W->c, n1, 2, &W->P.node1), MOEMU_OK);
    for (int r = 0; r < NDEV && !null_bufs; r++)
        for (int k = 0; k < 2; k++) {
            W->P.buf[r][k] = calloc(NBUF, sizeof(float));
            cr_assert_not_null(W->P.buf[r][k]);
        }
}

static void world_fini(world_t *W)
{
    par_comm_destroy(W->P.world);
    par_comm_destroy(W->P.node1);
    emu_cluster_destroy(W->c);
    for (int r = 0; r < NDEV; r++)
        for (int k = 0; k < 2; k++) free(W->P.buf[r][k]);
}

static void world_run(world_t *W)
{
    moemu_status_t st = emu_cluster_run(W->c, prog_fn, &W->P);
    cr_assert_eq(st, MOEMU_OK, "%s", moemu_errmsg());
}

Test(spans, collectives_tile_and_add_up)
{
    world_t W;
    world_init(&W, true, false, false);
    world_run(&W);
    world_run(&W); /* spans carry over, like clocks */
    size_t idle_spans = 0, comm_spans = 0;
    for (int r = 0; r < NDEV; r++) {
        emu_dev_t *d = emu_cluster_dev(W.c, r);
        size_t n = emu_dev_span_count(d);
        cr_assert_gt(n, 0);
        double kt = 0, ct = 0, it = 0, at = 0;
        for (size_t i = 0; i < n; i++) {
            const emu_span_t *s = emu_dev_span(d, i);
            cr_assert_eq(s->start, at, "device %d span %zu (%s) starts at "
                         "%.17g, the previous ended at %.17g", r, i,
                         emu_span_name(s), s->start, at);
            cr_assert_gt(s->end, s->start, "device %d span %zu (%s) is empty",
                         r, i, emu_span_name(s));
            at = s->end;
            double t = s->end - s->start;
            if (s->cat == EMU_SPAN_KERNEL) kt += t;
            else if (s->cat == EMU_SPAN_COMM) ct += t, comm_spans++;
            else {
                cr_assert_eq(s->cat, EMU_SPAN_IDLE);
                it += t, idle_spans++;
                cr_assert(strncmp(emu_span_name(s), "wait: ", 6) == 0);
                /* an idle span is followed by its communication */
                cr_assert_lt(i + 1, n);
                const emu_span_t *nx = emu_dev_span(d, i + 1);
                cr_assert_eq(nx->cat, EMU_SPAN_COMM);
                cr_assert_eq(nx->kind, s->kind);
                cr_assert_eq(nx->layer, s->layer);
            }
        }
        cr_assert_eq(at, emu_dev_clock(d), "device %d", r);
        ASSERT_NEAR(kt, emu_dev_kernel_time(d));
        ASSERT_NEAR(ct, emu_dev_comm_time(d));
        ASSERT_NEAR(it, emu_dev_idle_time(d));
    }
    cr_assert_gt(idle_spans, 0);
    cr_assert_gt(comm_spans, 0);

    /* device 0 waits for the others' staggered gemm in the first
     * all-reduce; the recv of the ring waits on a slower sender */
    const emu_span_t *s = emu_dev_span(emu_cluster_dev(W.c, 0), 1);
    cr_assert_eq(s->cat, EMU_SPAN_IDLE);
    cr_assert_str_eq(emu_span_name(s), "wait: all-reduce");
    cr_assert_eq(s->layer, 0);
    cr_assert_eq(s->link, EMU_LINK_INTER);

    /* bytes of a comm span: what the device sent */
    emu_dev_t *d5 = emu_cluster_dev(W.c, 5);
    double a2a = 0, rs = 0;
    for (size_t i = 0; i < emu_dev_span_count(d5); i++) {
        const emu_span_t *x = emu_dev_span(d5, i);
        if (x->cat == EMU_SPAN_COMM && x->kind == EMU_COLL_ALLTOALL) a2a += x->bytes;
        if (x->cat == EMU_SPAN_COMM && x->kind == EMU_COLL_REDUCE_SCATTER)
            rs += x->bytes;
    }
    double a2a_stats = 0;
    for (int l = 0; l < EMU_LINK__COUNT; l++)
        a2a_stats += emu_dev_comm_stats(d5, EMU_COLL_ALLTOALL, l)->bytes;
    ASSERT_NEAR(a2a, a2a_stats);
    ASSERT_NEAR(rs, emu_dev_comm_stats(d5, EMU_COLL_REDUCE_SCATTER,
                                       EMU_LINK_INTER)->bytes);
    world_fini(&W);
}

Test(spans, off_by_default)
{
    world_t W;
    world_init(&W, false, false, false);
    world_run(&W);
    for (int r = 0; r < NDEV; r++) {
        cr_assert_not(emu_dev_tracing(emu_cluster_dev(W.c, r)));
        cr_assert_eq(emu_dev_span_count(emu_cluster_dev(W.c, r)), 0);
    }
    world_fini(&W);
}

/* No-data mode records the same spans, bit for bit, with or without
 * buffers. */
Test(spans, nodata_gives_the_same_spans)
{
    world_t W[3];
    world_init(&W[0], true, false, false);
    world_init(&W[1], true, true, false);
    world_init(&W[2], true, true, true);
    for (int k = 0; k < 3; k++) world_run(&W[k]);
    for (int r = 0; r < NDEV; r++) {
        emu_dev_t *d0 = emu_cluster_dev(W[0].c, r);
        for (int k = 1; k < 3; k++) {
            emu_dev_t *d = emu_cluster_dev(W[k].c, r);
            cr_assert(emu_dev_nodata(d));
            cr_assert_eq(emu_dev_span_count(d), emu_dev_span_count(d0));
            for (size_t i = 0; i < emu_dev_span_count(d); i++) {
                const emu_span_t *x = emu_dev_span(d, i), *y = emu_dev_span(d0, i);
                cr_assert(x->start == y->start && x->end == y->end &&
                              x->flops == y->flops && x->bytes == y->bytes &&
                              x->layer == y->layer && x->cat == y->cat &&
                              x->kind == y->kind && x->link == y->link,
                          "device %d span %zu differs", r, i);
            }
            cr_assert_eq(emu_dev_clock(d), emu_dev_clock(d0));
        }
    }
    for (int k = 0; k < 3; k++) world_fini(&W[k]);
}

/* ---- the file: emu_trace_dump through outfile, as moemu writes it */

typedef struct {
    const emu_cluster_t *c;
    const emu_dev_t *const *devs;
    int n;
    const char *title;
} trace_arg_t;

static moemu_status_t fill_trace(FILE *f, const void *arg)
{
    const trace_arg_t *a = arg;
    return a->c ? emu_trace_dump(a->c, f, a->title)
                : emu_trace_dump_devs(a->devs, a->n, f, a->title);
}

static moemu_status_t write_trace(const emu_cluster_t *c, const char *path, const char *title)
{
    return outfile_write(path, fill_trace, &(trace_arg_t){.c = c, .title = title});
}

static moemu_status_t write_devs(const emu_dev_t *const *devs, int n, const char *path,
                                 const char *title)
{
    return outfile_write(path, fill_trace, &(trace_arg_t){.devs = devs, .n = n, .title = title});
}

static json_t *get(json_t *o, const char *key, int type)
{
    json_t *v = json_object_get(o, key);
    cr_assert_not_null(v, "no \"%s\" in an object", key);
    cr_assert_eq((int)json_typeof(v), type, "\"%s\" has the wrong type", key);
    return v;
}

static double num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(v && json_is_number(v), "\"%s\" is not a number", key);
    return json_number_value(v);
}

static long long ns(double us) { return llround(us * 1000); }

Test(file, valid_chrome_trace)
{
    world_t W;
    world_init(&W, true, false, false);
    world_run(&W);
    char dir[64], path[128];
    scratch_dir(dir);
    snprintf(path, sizeof path, "%s/run.json", dir);
    const char *title = "6 devices: \"quotes\", \\ and \xc3\xa9\n";
    cr_assert_eq(write_trace(W.c, path, title), MOEMU_OK, "%s",
                 moemu_errmsg());
    cr_assert_eq(dir_entries(dir), 1); /* no temporary file left */

    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    cr_assert_not_null(root, "%s:%d: %s", path, err.line, err.text);
    cr_assert(json_is_object(root));
    cr_assert_str_eq(json_string_value(get(root, "displayTimeUnit", JSON_STRING)),
                     "ms");
    json_t *other = get(root, "otherData", JSON_OBJECT);
    cr_assert_str_eq(json_string_value(get(other, "title", JSON_STRING)), title);
    json_t *events = get(root, "traceEvents", JSON_ARRAY);

    /* metadata: node N is process N+1, device R thread R+1 */
    bool pname[2] = {0}, psort[2] = {0}, tname[NDEV] = {0}, tsort[NDEV] = {0};
    /* spans per device, in file order */
    size_t cap = 4096, nx[NDEV] = {0};
    long long (*sp)[4096][2] = calloc(NDEV, sizeof *sp);
    cr_assert_not_null(sp);
    bool wait_ar0 = false, wait_recv = false, layer2 = false, inter = false;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        cr_assert(json_is_object(e));
        const char *ph = json_string_value(get(e, "ph", JSON_STRING));
        int pid = (int)num(e, "pid"), tid = (int)num(e, "tid");
        const char *name = json_string_value(get(e, "name", JSON_STRING));
        json_t *args = get(e, "args", JSON_OBJECT);
        if (!strcmp(ph, "M")) {
            cr_assert(pid == 1 || pid == 2, "pid %d", pid);
            if (!strcmp(name, "process_name")) {
                char want[32];
                snprintf(want, sizeof want, "node %d", pid - 1);
                cr_assert_str_eq(json_string_value(get(args, "name", JSON_STRING)),
                                 want);
                pname[pid - 1] = true;
            } else if (!strcmp(name, "process_sort_index")) {
                cr_assert_eq(num(args, "sort_index"), pid - 1);
                psort[pid - 1] = true;
            } else if (!strcmp(name, "thread_name")) {
                char want[32];
                snprintf(want, sizeof want, "device %d", tid - 1);
                cr_assert_str_eq(json_string_value(get(args, "name", JSON_STRING)),
                                 want);
                cr_assert_eq(pid - 1, (tid - 1) / 4);
                tname[tid - 1] = true;
            } else if (!strcmp(name, "thread_sort_index")) {
                cr_assert_eq(num(args, "sort_index"), tid - 1);
                tsort[tid - 1] = true;
            } else
                cr_assert_fail("unexpected metadata %s", name);
            continue;
        }
        cr_assert_str_eq(ph, "X");
        cr_assert(tid >= 1 && tid <= NDEV, "tid %d", tid);
        int r = tid - 1;
        cr_assert_eq(pid - 1, r / 4, "device %d on pid %d", r, pid);
        double ts = num(e, "ts"), dur = num(e, "dur");
        cr_assert_geq(ts, 0);
        cr_assert_geq(dur, 0);
        const char *cat = json_string_value(get(e, "cat", JSON_STRING));
        num(args, "flops");
        double bytes = num(args, "bytes");
        json_t *layer = json_object_get(args, "layer");
        if (layer) {
            cr_assert(json_is_integer(layer));
            if (json_integer_value(layer) == 2) layer2 = true;
        }
        if (!strcmp(cat, "kernel")) {
            cr_assert_null(json_object_get(args, "link"));
            bool known = false;
            for (int k = 0; k < EMU_KERNEL__COUNT; k++)
                known |= !strcmp(name, emu_kernel_name(k));
            cr_assert(known, "kernel %s", name);
        } else {
            cr_assert(!strcmp(cat, "comm") || !strcmp(cat, "idle"), "cat %s", cat);
            const char *link = json_string_value(get(args, "link", JSON_STRING));
            cr_assert(!strcmp(link, "intra-node") || !strcmp(link, "inter-node"));
            inter |= !strcmp(link, "inter-node");
            if (!strcmp(cat, "idle")) {
                cr_assert(strncmp(name, "wait: ", 6) == 0, "%s", name);
                cr_assert_eq(bytes, 0);
                if (r == 0 && !strcmp(name, "wait: all-reduce")) wait_ar0 = true;
                if (!strcmp(name, "wait: recv")) wait_recv = true;
            } else {
                bool known = false;
                for (int k = 0; k < EMU_COLL__COUNT; k++)
                    known |= !strcmp(name, emu_coll_name(k));
                cr_assert(known, "collective %s", name);
                cr_assert(strcmp(name, "send"), "sends take no time");
            }
        }
        cr_assert_lt(nx[r], cap);
        sp[r][nx[r]][0] = ns(ts);
        sp[r][nx[r]][1] = ns(ts) + ns(dur);
        nx[r]++;
    }
    for (int k = 0; k < 2; k++) cr_assert(pname[k] && psort[k], "node %d", k);
    for (int r = 0; r < NDEV; r++) cr_assert(tname[r] && tsort[r], "device %d", r);
    cr_assert(wait_ar0, "device 0 waits in the first all-reduce");
    cr_assert(wait_recv, "someone waits for a message");
    cr_assert(layer2, "layer tags are in args");
    cr_assert(inter);

    /* per device: sorted, back to back in whole nanoseconds (as Perfetto
     * reads them), ending at the device's clock */
    double maxclock = 0, maxend = 0;
    size_t total = 0;
    for (int r = 0; r < NDEV; r++) {
        emu_dev_t *d = emu_cluster_dev(W.c, r);
        cr_assert_eq(nx[r], emu_dev_span_count(d));
        total += nx[r];
        for (size_t k = 1; k < nx[r]; k++)
            cr_assert_eq(sp[r][k][0], sp[r][k - 1][1],
                         "device %d: span %zu starts at %lld ns, the previous "
                         "ends at %lld ns", r, k, sp[r][k][0], sp[r][k - 1][1]);
        double end_us = sp[r][nx[r] - 1][1] / 1e3, clock_us = emu_dev_clock(d) * 1e6;
        cr_assert(fabs(end_us - clock_us) <= 1e-9 * clock_us + 5e-4,
                  "device %d: last span ends at %.17g us, its clock is %.17g us",
                  r, end_us, clock_us);
        if (clock_us > maxclock) maxclock = clock_us;
        if (end_us > maxend) maxend = end_us;
    }
    cr_assert(fabs(maxend - maxclock) <= 1e-9 * maxclock + 5e-4);
    ASSERT_NEAR(num(other, "end_us"), maxclock);
    cr_assert_eq(num(other, "devices"), NDEV);
    cr_assert_eq(num(other, "nodes"), 2);
    cr_assert_eq(num(other, "spans"), (double)total);
    free(sp);
    json_decref(root);
    rm_dir(dir);
    world_fini(&W);
}

Test(file, standalone_devices_and_empty_traces)
{
    char dir[64], path[128];
    scratch_dir(dir);
    snprintf(path, sizeof path, "%s/one.json", dir);
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&spec, 0, false, &d), MOEMU_OK);
    const emu_dev_t *devs[] = {d};
    /* nothing recorded: a valid file with its metadata */
    cr_assert_eq(write_devs(devs, 1, path, NULL), MOEMU_OK);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    cr_assert_not_null(root, "%s", err.text);
    cr_assert_eq(json_array_size(json_object_get(root, "traceEvents")), 4);
    json_decref(root);

    emu_dev_set_trace(d, true);
    emu_dev_set_layer(d, 3);
    for (int i = 0; i < 5000; i++) /* past the first growth */
        emu_charge(d, i % 2 ? EMU_KERNEL_GEMM : EMU_KERNEL_EXPERT, 1e9, 1e6);
    cr_assert_eq(write_devs(devs, 1, path, "baseline"), MOEMU_OK);
    root = json_load_file(path, 0, &err);
    cr_assert_not_null(root, "%s", err.text);
    json_t *ev = json_object_get(root, "traceEvents");
    cr_assert_eq(json_array_size(ev), 4 + 5000);
    json_t *last = json_array_get(ev, 4 + 4999);
    double end = json_number_value(json_object_get(last, "ts")) +
                 json_number_value(json_object_get(last, "dur"));
    cr_assert(fabs(end - emu_dev_clock(d) * 1e6) <= 1e-9 * end + 5e-4);
    cr_assert_eq(json_integer_value(json_object_get(
                     json_object_get(last, "args"), "layer")),
                 3);
    json_decref(root);
    cr_assert_eq(dir_entries(dir), 1);
    emu_dev_destroy(d);
    rm_dir(dir);
}

Test(file, errors_leave_no_file)
{
    char dir[64], path[160];
    scratch_dir(dir);
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&spec, 0, false, &d), MOEMU_OK);
    emu_dev_set_trace(d, true);
    emu_charge(d, EMU_KERNEL_GEMM, 1e9, 1e6);
    const emu_dev_t *devs[] = {d};

    snprintf(path, sizeof path, "%s/no/such/dir/t.json", dir);
    cr_assert_eq(write_devs(devs, 1, path, NULL), MOEMU_ERR_IO);
    cr_assert(strstr(moemu_errmsg(), path), "%s", moemu_errmsg());

    snprintf(path, sizeof path, "%s/t.json", dir);
    cr_assert_eq(write_devs(devs, 1, path, "bad \xff title"),
                 MOEMU_ERR_INVALID);
    cr_assert_eq(dir_entries(dir), 0);
    cr_assert_eq(emu_trace_dump_devs(NULL, 1, stdout, NULL), MOEMU_ERR_INVALID);
    cr_assert_eq(emu_trace_dump_devs(devs, 1, NULL, NULL), MOEMU_ERR_INVALID);
    cr_assert_eq(emu_trace_dump(NULL, stdout, NULL), MOEMU_ERR_INVALID);

    /* a file that exists is replaced whole */
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("old and long contents that must all go away", f);
    fclose(f);
    cr_assert_eq(write_devs(devs, 1, path, NULL), MOEMU_OK);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    cr_assert_not_null(root, "%s", err.text);
    json_decref(root);
    cr_assert_eq(dir_entries(dir), 1);
    emu_dev_destroy(d);
    rm_dir(dir);
}
