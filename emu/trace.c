/* Writing devices' timelines as Chrome trace-event JSON (the "JSON Object
 * Format"), for Perfetto and chrome://tracing, to the caller's stream (the
 * engine's one output writer makes the file). A run can hold millions of
 * spans, so events are streamed rather than built as one jansson tree; every string in them is one of
 * emu's fixed ASCII names, and the one string from outside (the title) is
 * encoded by jansson, so the file is valid JSON. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "emu/emu_impl.h"

/* ---- numbers, formatted by hand: printf("%g") would dominate the time */

static char *emu_put_u64(char *q, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *q++ = tmp[--n];
    return q;
}

static char *emu_put_i64(char *q, int64_t v)
{
    if (v < 0) {
        *q++ = '-';
        return emu_put_u64(q, (uint64_t)0 - (uint64_t)v);
    }
    return emu_put_u64(q, (uint64_t)v);
}

/* Whole nanoseconds written as microseconds with three decimals. */
static char *emu_put_ns(char *q, int64_t ns)
{
    if (ns < 0) {
        *q++ = '-';
        ns = -ns;
    }
    q = emu_put_u64(q, (uint64_t)ns / 1000);
    unsigned f = (unsigned)((uint64_t)ns % 1000);
    *q++ = '.';
    *q++ = (char)('0' + f / 100);
    *q++ = (char)('0' + f / 10 % 10);
    *q++ = (char)('0' + f % 10);
    return q;
}

/* A JSON number: integers below 2^53 exactly as integers, others with 17
 * significant digits (they read back to the same double), a non-finite
 * value (never from the cost model) as null. */
static char *emu_put_num(char *q, double v)
{
    if (!isfinite(v)) {
        memcpy(q, "null", 4);
        return q + 4;
    }
    if (v == floor(v) && fabs(v) < 9007199254740992.0)
        return emu_put_i64(q, (int64_t)v);
    return q + snprintf(q, 32, "%.17g", v);
}

static char *emu_put_str(char *q, const char *s)
{
    size_t n = strlen(s);
    memcpy(q, s, n);
    return q + n;
}

/* Virtual seconds to whole nanoseconds (clocks are finite and >= 0). */
static int64_t emu_ns(double s)
{
    double ns = s * 1e9;
    if (!(ns > -9e18 && ns < 9e18)) return 0;
    return (int64_t)llround(ns);
}

/* ---- the file */

typedef struct {
    FILE *f;
    bool first; /* no event written yet: no comma before the next */
} emu_tw_t;

static void emu_tw_event(emu_tw_t *w, const char *line, size_t n)
{
    if (!w->first) fputs(",\n", w->f);
    w->first = false;
    fwrite(line, 1, n, w->f);
}

/* A metadata event: name (process_name, thread_name, *_sort_index) of
 * pid, tid, with one argument, a string or a number. */
static void emu_tw_meta(emu_tw_t *w, const char *name, int pid, int tid,
                        const char *key, const char *sval, int64_t ival)
{
    char line[256], *q = line;
    q = emu_put_str(q, "{\"ph\":\"M\",\"pid\":");
    q = emu_put_i64(q, pid);
    q = emu_put_str(q, ",\"tid\":");
    q = emu_put_i64(q, tid);
    q = emu_put_str(q, ",\"name\":\"");
    q = emu_put_str(q, name);
    q = emu_put_str(q, "\",\"args\":{\"");
    q = emu_put_str(q, key);
    q = emu_put_str(q, "\":");
    if (sval) {
        *q++ = '"';
        q = emu_put_str(q, sval);
        *q++ = '"';
    } else
        q = emu_put_i64(q, ival);
    q = emu_put_str(q, "}}");
    emu_tw_event(w, line, (size_t)(q - line));
}

static void emu_tw_span(emu_tw_t *w, int pid, int tid, const emu_span_t *s)
{
    int64_t t0 = emu_ns(s->start), t1 = emu_ns(s->end);
    char line[512], *q = line;
    q = emu_put_str(q, "{\"ph\":\"X\",\"pid\":");
    q = emu_put_i64(q, pid);
    q = emu_put_str(q, ",\"tid\":");
    q = emu_put_i64(q, tid);
    q = emu_put_str(q, ",\"ts\":");
    q = emu_put_ns(q, t0);
    q = emu_put_str(q, ",\"dur\":");
    q = emu_put_ns(q, t1 > t0 ? t1 - t0 : 0);
    q = emu_put_str(q, ",\"name\":\"");
    q = emu_put_str(q, emu_span_name(s));
    q = emu_put_str(q, "\",\"cat\":\"");
    q = emu_put_str(q, emu_span_cat_name((emu_span_cat_t)s->cat));
    q = emu_put_str(q, "\",\"args\":{\"flops\":");
    q = emu_put_num(q, s->flops);
    q = emu_put_str(q, ",\"bytes\":");
    q = emu_put_num(q, s->bytes);
    if (s->layer >= 0) {
        q = emu_put_str(q, ",\"layer\":");
        q = emu_put_i64(q, s->layer);
    }
    if ((s->cat == EMU_SPAN_COMM || s->cat == EMU_SPAN_IDLE) && s->link < EMU_LINK__COUNT) {
        q = emu_put_str(q, ",\"link\":\"");
        q = emu_put_str(q, emu_link_name((emu_link_t)s->link));
        *q++ = '"';
    }
    q = emu_put_str(q, "}}");
    emu_tw_event(w, line, (size_t)(q - line));
}

/* "otherData": the title and what a reader needs to interpret the file,
 * encoded by jansson into *out (free it). */
static moemu_status_t emu_tw_other(const emu_dev_t *const *devs, int n,
                                   int nodes, const char *title, char **out)
{
    double end = 0;
    size_t spans = 0;
    for (int i = 0; i < n; i++) {
        if (devs[i]->clock > end) end = devs[i]->clock;
        spans += devs[i]->nspans;
    }
    json_t *t = json_string(title ? title : "moemu");
    if (!t)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "the trace's title is not valid UTF-8");
    json_t *o = json_pack("{s:o, s:s, s:s, s:i, s:i, s:I, s:f}", "title", t,
#ifdef PACKAGE_VERSION
                          "generator", "moemu " PACKAGE_VERSION,
#else
                          "generator", "moemu",
#endif
                          "clock", "virtual time, microseconds",
                          "devices", n, "nodes", nodes,
                          "spans", (json_int_t)spans,
                          "end_us", end * 1e6);
    *out = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    if (!*out)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot encode the trace's "
                                           "otherData: out of host memory");
    return MOEMU_OK;
}

/* The thread of device d's stream: R+1 for compute, EMU_TID_COMM+R+1 for
 * communication, listed under it. */
#define EMU_TID_COMM (1 << 24)
static int emu_tid(const emu_dev_t *d, int stream)
{
    return (stream ? EMU_TID_COMM : 0) + d->rank + 1;
}

static bool emu_has_stream1(const emu_dev_t *d)
{
    for (size_t k = 0; k < d->nspans; k++)
        if (d->spans[k].stream) return true;
    return false;
}

/* Metadata: node N is process N+1 ("node N"), device R its thread R+1
 * ("device R") and, when some of its collectives ran beside computation,
 * its communication stream ("device R comm"); Perfetto keeps pid and
 * tid 0 for the idle task. */
static void emu_tw_names(emu_tw_t *w, const emu_dev_t *const *devs, int n,
                         bool *seen)
{
    for (int i = 0; i < n; i++) {
        const emu_dev_t *d = devs[i];
        char name[32];
        if (!seen[d->node]) {
            snprintf(name, sizeof name, "node %d", d->node);
            emu_tw_meta(w, "process_name", d->node + 1, 0, "name", name, 0);
            emu_tw_meta(w, "process_sort_index", d->node + 1, 0,
                        "sort_index", NULL, d->node);
            seen[d->node] = true;
        }
        snprintf(name, sizeof name, "device %d", d->rank);
        emu_tw_meta(w, "thread_name", d->node + 1, d->rank + 1, "name", name,
                    0);
        emu_tw_meta(w, "thread_sort_index", d->node + 1, d->rank + 1,
                    "sort_index", NULL, d->rank);
        if (!emu_has_stream1(d)) continue;
        snprintf(name, sizeof name, "device %d comm", d->rank);
        emu_tw_meta(w, "thread_name", d->node + 1, emu_tid(d, 1), "name", name, 0);
        emu_tw_meta(w, "thread_sort_index", d->node + 1, emu_tid(d, 1), "sort_index", NULL,
                    d->rank);
    }
}

moemu_status_t emu_trace_dump_devs(const emu_dev_t *const *devs, int n,
                                   FILE *f, const char *title)
{
    if (!f || (!devs && n > 0) || n < 0)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "emu_trace_dump_devs: NULL stream or devices");
    int maxnode = 0, nodes = 0;
    for (int i = 0; i < n; i++) {
        if (devs[i]->spans_lost)
            return moemu_fail(MOEMU_ERR_NOMEM,
                              "device %d lost %llu spans of its trace: the "
                              "host ran out of memory",
                              devs[i]->rank,
                              (unsigned long long)devs[i]->spans_lost);
        if (devs[i]->node > maxnode) maxnode = devs[i]->node;
    }
    bool *seen = calloc((size_t)maxnode + 1, sizeof *seen);
    if (!seen)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot write the trace: out of "
                                           "host memory");
    for (int i = 0; i < n; i++) {
        nodes += !seen[devs[i]->node];
        seen[devs[i]->node] = true;
    }
    memset(seen, 0, ((size_t)maxnode + 1) * sizeof *seen);
    char *other = NULL;
    moemu_status_t st = emu_tw_other(devs, n, nodes, title, &other);
    if (st == MOEMU_OK) {
        emu_tw_t w = {f, true};
        fputs("{\"traceEvents\":[\n", f);
        emu_tw_names(&w, devs, n, seen);
        for (int i = 0; i < n; i++)
            for (size_t k = 0; k < devs[i]->nspans; k++)
                emu_tw_span(&w, devs[i]->node + 1, emu_tid(devs[i], devs[i]->spans[k].stream),
                            &devs[i]->spans[k]);
        fprintf(f, "\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":%s}\n",
                other);
    }
    free(seen);
    free(other);
    return st;
}

moemu_status_t emu_trace_dump(const emu_cluster_t *c, FILE *f,
                              const char *title)
{
    if (!c)
        return moemu_fail(MOEMU_ERR_INVALID, "emu_trace_dump: NULL cluster");
    const emu_dev_t **devs = malloc((size_t)c->ndev * sizeof *devs);
    if (!devs)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot write the trace: out of "
                                           "host memory");
    for (int d = 0; d < c->ndev; d++) devs[d] = &c->devs[d];
    moemu_status_t st = emu_trace_dump_devs(devs, c->ndev, f, title);
    free(devs);
    return st;
}
