/* The sweep: enumerate, run each candidate as a dry run, judge, rank,
 * mark the Pareto front; its table, CSV, JSON and plot. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/tools/outfile.h"
#include "engine/tools/sweep.h"

/* A routing table larger than this is not precomputed: candidates then
 * draw from the routing source themselves (slower, same decisions). */
#define SWEEP_ROUTE_TABLE_MAX ((size_t)1 << 30)

#define SWEEP_MAX_MB 32

static const char *const objective_names[SWEEP_OBJ__COUNT] = {"throughput", "ttft", "latency"};

const char *sweep_objective_name(sweep_objective_t o)
{
    return o >= 0 && o < SWEEP_OBJ__COUNT ? objective_names[o] : "?";
}

moemu_status_t sweep_objective_parse(const char *s, sweep_objective_t *out)
{
    for (int i = 0; i < SWEEP_OBJ__COUNT; i++)
        if (strcmp(s, objective_names[i]) == 0) {
            *out = (sweep_objective_t)i;
            return MOEMU_OK;
        }
    return moemu_fail(MOEMU_ERR_INVALID, "objective '%s': expected throughput, ttft or latency",
                      s);
}

const char *sweep_fate_name(sweep_fate_t f)
{
    switch (f) {
    case SWEEP_KEPT: return "kept";
    case SWEEP_NO_FIT: return "does not fit";
    case SWEEP_MISSED: return "misses constraints";
    }
    return "?";
}

/* Add m to the ascending set mb[0..n) unless it is there or out of
 * range; returns the new size. */
static int mb_add(int *mb, int n, int m, int cap)
{
    if (m < 1 || m > cap || n == SWEEP_MAX_MB) return n;
    int i = 0;
    while (i < n && mb[i] < m) i++;
    if (i < n && mb[i] == m) return n;
    memmove(mb + i + 1, mb + i, sizeof(int) * (size_t)(n - i));
    mb[i] = m;
    return n + 1;
}

int sweep_micro_batches(const par_strategy_t *s, int B, const sweep_opts_t *o, int *mb)
{
    int n = 0;
    mb[n++] = 1;
    if (s->pp < 2) return n;
    int cap = B / (s->dp > 0 ? s->dp : 1); /* the smallest replica's sequences */
    switch (o->mb) {
    case SWEEP_MB_LIST:
        for (int i = 0; i < o->n_micro_batches; i++) n = mb_add(mb, n, o->micro_batches[i], cap);
        break;
    case SWEEP_MB_PP:
        n = mb_add(mb, n, s->pp, cap);
        n = mb_add(mb, n, 2 * s->pp, cap);
        break;
    default:
        for (int m = 2; m <= cap; m *= 2) n = mb_add(mb, n, m, cap);
        break;
    }
    return n;
}

/* ---- running one candidate */

typedef struct {
    const cfg_model_t *cfg;
    const wl_t *wl;
    const emu_hw_t *hw;
    wts_t w;
    route_src_t src;   /* the --routing source */
    route_src_t table; /* its decisions, precomputed once, replayed */
    int *record;       /* the table's storage */
    const route_src_t *route;
} sweep_ctx_t;

/* Every decision the runs will ask for, computed once: the decisions
 * are a function of (seed, layer, sequence, position), the same for
 * every strategy, so replaying them gives every run the very decisions
 * (and virtual times) the routing spec would. */
static moemu_status_t route_table(sweep_ctx_t *x)
{
    x->route = &x->src;
    if (x->src.kind == ROUTE_REPLAY) return MOEMU_OK;
    const cfg_model_t *c = x->cfg;
    const wl_t *wl = x->wl;
    size_t n;
    double bytes = 4.0 * c->num_hidden_layers * wl->batch * model_route_positions(wl) *
                   c->num_experts_per_tok;
    if (bytes > (double)SWEEP_ROUTE_TABLE_MAX) return MOEMU_OK;
    if (!(x->record = route_record_new(c, wl, &n)))
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing table (%.0f bytes)", bytes);
    int L = c->num_hidden_layers, P = model_route_positions(wl), k = c->num_experts_per_tok;
    int extra = wl->decode > 1 ? wl->decode - 1 : 0;
    for (int l = 0; l < L; l++)
        for (int b = 0; b < wl->batch; b++) {
            int *rec = x->record + ((size_t)l * wl->batch + b) * P * k;
            for (int p = 0; p < wl->len[b] + extra && p < P; p++)
                route_choose(&x->src, l, b, p, rec + (size_t)p * k);
        }
    route_replay_record(&x->table, x->record, c, wl);
    x->route = &x->table;
    return MOEMU_OK;
}

static double max_peak(const report_t *r)
{
    double m = 0;
    for (int i = 0; i < r->devices; i++) m = r->dev[i].mem_peak > m ? r->dev[i].mem_peak : m;
    return m;
}

/* Run row's candidate; a device out of memory marks the row, any other
 * failure is returned. */
static moemu_status_t run_one(sweep_row_t *row, sweep_ctx_t *x)
{
    /* unpinned threads: as fast or faster here (16 devices on 2 cores,
     * most of the time spent meeting in collectives); virtual time does
     * not depend on it */
    dist_opts_t d = {.strategy = row->strategy, .micro_batches = row->micro_batches,
                     .hw = *x->hw, .cluster = {.nodata = true, .no_pin = true}, .dry = true,
                     .routing = x->route};
    model_opts_t mo = {0};
    model_out_t out;
    emu_cluster_t *cl;
    row->capacity = x->hw->spec.mem_capacity;
    moemu_status_t st = dist_generate(&out, &cl, &x->w, x->wl, &d, &mo);
    if (st == MOEMU_ERR_OOM) {
        row->fate = SWEEP_NO_FIT;
        snprintf(row->why, sizeof row->why, "%s", moemu_errmsg());
        moemu_errclear();
        return MOEMU_OK;
    }
    MOEMU_CHECK(st);
    report_t r;
    st = report_build(&r, cl, &out, x->cfg, x->wl, &d, 0);
    if (st == MOEMU_OK) {
        double P = r.devices;
        row->ttft = r.ttft_batch;
        row->tpms_dev = r.total_tpms / P;
        row->prefill_tpms_dev = r.prefill_tpms / P;
        row->decode_tpms_dev = r.decode_tpms / P;
        row->e2e = r.e2e;
        row->mem_peak = max_peak(&r);
        row->comm_share = r.exposed_comm_mean;
        row->bubble = 0;
        for (int s = 0; s < r.stages; s++) row->bubble += r.bubble[s] / r.stages;
        row->imbalance = r.load_max_mean;
        row->busiest = r.busiest_vs_mean;
        report_free(&r);
    }
    model_out_free(&out);
    emu_cluster_destroy(cl);
    return st;
}

void sweep_judge(sweep_row_t *row, const sweep_opts_t *o)
{
    if (row->fate != SWEEP_KEPT) return;
    double limit = (1 - o->memory_headroom) * row->capacity;
    if (o->memory_headroom > 0 && row->mem_peak > limit) {
        row->fate = SWEEP_MISSED;
        snprintf(row->why, sizeof row->why,
                 "memory peak %.3g GB is over (1 - %g) x %.3g GB = %.3g GB", row->mem_peak / 1e9,
                 o->memory_headroom, row->capacity / 1e9, limit / 1e9);
    } else if (o->ttft_max > 0 && row->ttft > o->ttft_max) {
        row->fate = SWEEP_MISSED;
        snprintf(row->why, sizeof row->why, "TTFT %.4g s is over the limit of %g s", row->ttft,
                 o->ttft_max);
    }
}

/* ---- ranking */

static int cmp_num(double a, double b) { return a < b ? -1 : a > b ? 1 : 0; }

static int cmp_rows(const sweep_row_t *a, const sweep_row_t *b, sweep_objective_t obj)
{
    bool ka = a->fate == SWEEP_KEPT, kb = b->fate == SWEEP_KEPT;
    if (ka != kb) return ka ? -1 : 1;
    if (!ka) return cmp_num(a->index, b->index);
    int c = obj == SWEEP_OBJ_TTFT      ? cmp_num(a->ttft, b->ttft)
            : obj == SWEEP_OBJ_LATENCY ? cmp_num(a->e2e, b->e2e)
                                       : cmp_num(b->tpms_dev, a->tpms_dev);
    if (!c) c = cmp_num(a->ttft, b->ttft);
    if (!c) c = cmp_num(b->tpms_dev, a->tpms_dev);
    if (!c) c = cmp_num(a->e2e, b->e2e);
    if (!c) c = cmp_num(a->index, b->index);
    return c;
}

void sweep_mark_pareto(sweep_row_t *rows, int n)
{
    for (int i = 0; i < n; i++) {
        sweep_row_t *a = &rows[i];
        a->pareto = false;
        if (a->fate != SWEEP_KEPT) continue;
        bool dominated = false;
        for (int j = 0; j < n && !dominated; j++) {
            const sweep_row_t *b = &rows[j];
            if (j == i || b->fate != SWEEP_KEPT) continue;
            dominated = b->ttft <= a->ttft && b->tpms_dev >= a->tpms_dev &&
                        (b->ttft < a->ttft || b->tpms_dev > a->tpms_dev);
        }
        a->pareto = !dominated;
    }
}

moemu_status_t sweep_rank(sweep_row_t *rows, int n, sweep_objective_t obj)
{
    /* a bottom-up merge sort: stable, and the order is total anyway */
    sweep_row_t *tmp = n > 1 ? malloc(sizeof *tmp * (size_t)n) : NULL;
    if (n > 1 && !tmp) return moemu_fail(MOEMU_ERR_NOMEM, "cannot rank %d candidates", n);
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int i = lo, j = mid, k = lo;
            while (i < mid || j < hi)
                tmp[k++] = j >= hi || (i < mid && cmp_rows(&rows[i], &rows[j], obj) <= 0)
                               ? rows[i++]
                               : rows[j++];
        }
        memcpy(rows, tmp, sizeof *tmp * (size_t)n);
    }
    free(tmp);
    int r = 0;
    for (int i = 0; i < n; i++) rows[i].rank = rows[i].fate == SWEEP_KEPT ? ++r : 0;
    sweep_mark_pareto(rows, n);
    return MOEMU_OK;
}

/* ---- the sweep */

/* Judge a row that ran, count it, report progress. */
static void row_done(sweep_t *out, sweep_row_t *r, const sweep_opts_t *o)
{
    sweep_judge(r, o);
    out->ran++;
    out->no_fit += r->fate == SWEEP_NO_FIT;
    out->missed += r->fate == SWEEP_MISSED;
    out->kept += r->fate == SWEEP_KEPT;
    if (o->progress) o->progress(o->progress_arg, out->ran, out->n_rows, r);
}

/* Every candidate, one after another, in this process. */
static moemu_status_t run_here(sweep_t *out, sweep_ctx_t *x, const sweep_opts_t *o)
{
    for (int i = 0; i < out->n_rows; i++) {
        sweep_row_t *r = &out->rows[i];
        double t0 = emu_host_seconds();
        MOEMU_CHECK(run_one(r, x));
        r->host_s = emu_host_seconds() - t0;
        row_done(out, r, o);
    }
    return MOEMU_OK;
}

/* ---- worker processes: each runs the candidates it is sent, one at a
 * time, over a socket pair (an index in, the row and its status out).
 * Separate processes, not threads: a dry run spends most of its host
 * time in the kernel (device threads meeting in collectives, no-data
 * buffers mapped and unmapped), and in one process the runs would share
 * its address space's lock; measured on 2 cores, 2 processes run a
 * sweep 1.46x as fast as one. */

typedef struct {
    int index;
    moemu_status_t st;
    char msg[1024]; /* the error's message when st is not MOEMU_OK */
    sweep_row_t row;
} sweep_msg_t;

static bool io_full(int fd, void *buf, size_t n, bool out)
{
    char *p = buf;
    while (n > 0) {
        ssize_t k = out ? send(fd, p, n, MSG_NOSIGNAL) : read(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static __attribute__((noreturn)) void worker_main(int fd, sweep_t *out, sweep_ctx_t *x)
{
    sweep_msg_t m;
    for (int idx; io_full(fd, &idx, sizeof idx, false);) {
        if (idx < 0 || idx >= out->n_rows) _exit(2);
        memset(&m, 0, sizeof m);
        m.index = idx;
        m.row = out->rows[idx];
        double t0 = emu_host_seconds();
        m.st = run_one(&m.row, x);
        m.row.host_s = emu_host_seconds() - t0;
        if (m.st != MOEMU_OK) snprintf(m.msg, sizeof m.msg, "%s", moemu_errmsg());
        if (!io_full(fd, &m, sizeof m, true)) _exit(1);
    }
    _exit(0);
}

typedef struct {
    pid_t pid;
    int fd;
    int busy; /* the candidate it runs, -1: none */
} sweep_worker_t;

/* Why worker w ended: its exit status or signal. */
static void worker_end(sweep_worker_t *w, char *why, size_t n)
{
    int status = 0;
    pid_t p;
    while ((p = waitpid(w->pid, &status, 0)) < 0 && errno == EINTR) {}
    if (p < 0) snprintf(why, n, "lost");
    else if (WIFSIGNALED(status)) snprintf(why, n, "killed by signal %d", WTERMSIG(status));
    else snprintf(why, n, "exit status %d", WEXITSTATUS(status));
    w->pid = -1;
}

static moemu_status_t run_workers(sweep_t *out, sweep_ctx_t *x, const sweep_opts_t *o)
{
    int jobs = o->jobs < out->n_rows ? o->jobs : out->n_rows;
    sweep_worker_t *wk = calloc((size_t)jobs, sizeof *wk);
    sweep_msg_t *m = malloc(sizeof *m);
    struct pollfd *pf = calloc((size_t)jobs, sizeof *pf);
    if (!wk || !m || !pf) {
        free(wk);
        free(m);
        free(pf);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot start %d sweep workers", jobs);
    }
    moemu_status_t st = MOEMU_OK;
    int started = 0;
    fflush(NULL); /* nothing buffered is written twice */
    for (; started < jobs; started++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
            st = moemu_fail(MOEMU_ERR_NOMEM, "cannot connect a sweep worker: %s", strerror(errno));
            break;
        }
        pid_t pid = fork();
        if (pid < 0) {
            st = moemu_fail(MOEMU_ERR_NOMEM, "cannot start a sweep worker: %s", strerror(errno));
            close(sv[0]);
            close(sv[1]);
            break;
        }
        if (pid == 0) {
            for (int i = 0; i < started; i++) close(wk[i].fd);
            close(sv[0]);
            worker_main(sv[1], out, x);
        }
        close(sv[1]);
        wk[started] = (sweep_worker_t){.pid = pid, .fd = sv[0], .busy = -1};
    }
    int next = 0, busy = 0;
    for (int i = 0; i < started && st == MOEMU_OK && next < out->n_rows; i++) {
        if (!io_full(wk[i].fd, &next, sizeof next, true)) break; /* seen below as lost */
        wk[i].busy = next++;
        busy++;
    }
    while (busy > 0) {
        int np = 0;
        for (int i = 0; i < started; i++)
            if (wk[i].busy >= 0) pf[np++] = (struct pollfd){.fd = wk[i].fd, .events = POLLIN};
        if (poll(pf, (nfds_t)np, -1) < 0) {
            if (errno == EINTR) continue;
            if (st == MOEMU_OK)
                st = moemu_fail(MOEMU_ERR_INTERNAL, "sweep: poll: %s", strerror(errno));
            break;
        }
        for (int k = 0; k < np; k++) {
            if (!pf[k].revents) continue;
            sweep_worker_t *w = NULL;
            for (int i = 0; i < started; i++)
                if (wk[i].fd == pf[k].fd) w = &wk[i];
            int idx = w->busy;
            w->busy = -1;
            busy--;
            if (!io_full(w->fd, m, sizeof *m, false) || m->index != idx) {
                char why[64];
                close(w->fd);
                w->fd = -1;
                worker_end(w, why, sizeof why);
                if (st == MOEMU_OK)
                    st = moemu_fail(MOEMU_ERR_INTERNAL, "sweep worker stopped (%s) while "
                                    "running %s x%d", why, out->rows[idx].name,
                                    out->rows[idx].micro_batches);
                continue;
            }
            if (m->st != MOEMU_OK) {
                if (st == MOEMU_OK) st = moemu_fail(m->st, "%s", m->msg);
            } else if (st == MOEMU_OK) {
                out->rows[idx] = m->row;
                row_done(out, &out->rows[idx], o);
            }
            if (st == MOEMU_OK && next < out->n_rows) {
                if (io_full(w->fd, &next, sizeof next, true)) {
                    w->busy = next++;
                    busy++;
                }
            }
        }
    }
    /* every worker reads the end of its socket and leaves */
    for (int i = 0; i < started; i++) {
        if (wk[i].fd >= 0) close(wk[i].fd);
        if (wk[i].pid > 0) {
            char why[64];
            worker_end(&wk[i], why, sizeof why);
        }
    }
    if (st == MOEMU_OK && out->ran < out->n_rows)
        st = moemu_fail(MOEMU_ERR_INTERNAL, "sweep: %d of %d candidates ran", out->ran,
                        out->n_rows);
    free(wk);
    free(m);
    free(pf);
    return st;
}

bool sweep_uneven_helps(const cfg_model_t *c)
{
    /* weights in elements, as the devices count them (engine/dist.c) */
    double d = c->hidden_size, hd = c->head_dim, mats = c->hidden_act == LAYER_ACT_SILU ? 3 : 2;
    double layer = 2 * d + 2 * c->num_attention_heads * hd * d +
                   2 * c->num_key_value_heads * hd * d + (double)c->num_local_experts * d +
                   (double)c->num_local_experts * mats * c->intermediate_size * d +
                   (double)c->num_shared_experts * mats * c->shared_expert_intermediate_size * d;
    double head = d + (double)c->vocab_size * d;
    return head > layer;
}

static void ctx_free(sweep_ctx_t *x)
{
    route_close(&x->src);
    free(x->record);
    wts_free(&x->w);
}

moemu_status_t sweep_run(sweep_t *out, const cfg_model_t *cfg, const wl_t *wl,
                         const emu_hw_t *hw, int devices, const sweep_opts_t *o)
{
    memset(out, 0, sizeof *out);
    out->objective = o->objective;
    if (!(o->memory_headroom >= 0 && o->memory_headroom < 1))
        return moemu_fail(MOEMU_ERR_INVALID, "memory headroom %g: expected a fraction in [0, 1)",
                          o->memory_headroom);
    if (!(o->ttft_max >= 0) || !isfinite(o->ttft_max))
        return moemu_fail(MOEMU_ERR_INVALID, "TTFT limit %g s: expected a number >= 0",
                          o->ttft_max);
    if (o->objective < 0 || o->objective >= SWEEP_OBJ__COUNT)
        return moemu_fail(MOEMU_ERR_INVALID, "objective %d: no such objective", (int)o->objective);
    par_dims_t dims;
    dist_dims(cfg, &dims);
    par_enum_opts_t en = o->enumerate;
    en.even_only = o->uneven == SWEEP_UNEVEN_OFF ||
                   (o->uneven == SWEEP_UNEVEN_AUTO && !sweep_uneven_helps(cfg));
    int ns = par_strategy_enumerate(&dims, devices, &en, NULL, 0);
    if (ns < 1)
        return moemu_fail(MOEMU_ERR_INVALID, "no valid strategy for %s on %d device%s (with the "
                          "restrictions given)", cfg->name, devices, devices == 1 ? "" : "s");
    par_strategy_t *strats = malloc(sizeof *strats * (size_t)ns);
    if (!strats) return moemu_fail(MOEMU_ERR_NOMEM, "cannot hold %d strategies", ns);
    par_strategy_enumerate(&dims, devices, &en, strats, ns);
    int total = 0, mb[SWEEP_MAX_MB];
    for (int i = 0; i < ns; i++) total += sweep_micro_batches(&strats[i], wl->batch, o, mb);
    sweep_row_t *rows = calloc((size_t)total, sizeof *rows);
    if (!rows) {
        free(strats);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot hold %d candidates", total);
    }
    int n = 0;
    for (int i = 0; i < ns; i++) {
        int k = sweep_micro_batches(&strats[i], wl->batch, o, mb);
        for (int j = 0; j < k; j++, n++) {
            rows[n].strategy = strats[i];
            par_strategy_format(&strats[i], rows[n].name, sizeof rows[n].name);
            rows[n].micro_batches = mb[j];
            rows[n].index = n;
        }
    }
    free(strats);
    out->rows = rows;
    out->n_rows = total;
    out->strategies = ns;

    sweep_ctx_t x = {.cfg = cfg, .wl = wl, .hw = hw};
    moemu_status_t st = wts_address_only(&x.w, cfg);
    if (st != MOEMU_OK) {
        sweep_free(out);
        return st;
    }
    st = route_open(&x.src, o->routing ? o->routing : "uniform", cfg, wl, o->seed);
    if (st == MOEMU_OK) st = route_table(&x);
    if (st == MOEMU_OK)
        st = o->jobs > 1 && total > 1 ? run_workers(out, &x, o) : run_here(out, &x, o);
    ctx_free(&x);
    if (st == MOEMU_OK) st = sweep_rank(rows, total, o->objective);
    if (st != MOEMU_OK) sweep_free(out);
    return st;
}

void sweep_free(sweep_t *s)
{
    free(s->rows);
    memset(s, 0, sizeof *s);
}

/* ---- outputs */

void sweep_print(const sweep_t *s, int top, FILE *f)
{
    int shown = top > 0 && top < s->kept ? top : s->kept, w = 8;
    for (int i = 0; i < shown; i++) {
        char name[SWEEP_NAME_LEN + 16];
        snprintf(name, sizeof name, "%s x%d", s->rows[i].name, s->rows[i].micro_batches);
        w = (int)strlen(name) > w ? (int)strlen(name) : w;
    }
    if (shown > 0) {
        fprintf(f, "%4s  %-*s %10s %11s %10s %15s %7s %8s %7s  %s\n", "rank", w,
                "strategy", "TTFT ms", "tok/ms/dev", "e2e ms", "memory GB (%)", "comm %",
                "bubble %", "imbal.", "pareto");
        for (int i = 0; i < shown; i++) {
            const sweep_row_t *r = &s->rows[i];
            char name[SWEEP_NAME_LEN + 16], mem[48];
            snprintf(name, sizeof name, "%s x%d", r->name, r->micro_batches);
            snprintf(mem, sizeof mem, "%.2f (%.0f%%)", r->mem_peak / 1e9,
                     r->capacity > 0 ? 100 * r->mem_peak / r->capacity : 0);
            fprintf(f, "%4d  %-*s %10.3f %11.3f %10.3f %15s %7.1f %8.1f %7.2f  %s\n", r->rank, w,
                    name, 1e3 * r->ttft, r->tpms_dev, 1e3 * r->e2e, mem, 100 * r->comm_share,
                    100 * r->bubble, r->imbalance, r->pareto ? "*" : "");
        }
    }
    int front = 0;
    for (int i = 0; i < s->n_rows; i++) front += s->rows[i].pareto;
    fprintf(f, "%d valid strategies, %d candidates (strategy x micro-batches) run: %d do not "
               "fit in memory, %d miss the constraints, %d kept (%d on the Pareto front, *)\n",
            s->strategies, s->ran, s->no_fit, s->missed, s->kept, front);
    if (shown < s->kept)
        fprintf(f, "the top %d of %d by %s (x M: M micro-batches per replica); --top 0 shows "
                   "all, --csv and --json write every candidate\n",
                shown, s->kept, sweep_objective_name(s->objective));
    else if (s->kept > 0)
        fprintf(f, "ranked by %s (x M: M micro-batches per replica)\n",
                sweep_objective_name(s->objective));
    else
        fprintf(f, "no candidate fits and meets the constraints\n");
}

/* A CSV field: quoted when it holds a comma, a quote or a line break. */
static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

moemu_status_t sweep_csv(const sweep_t *s, const char *path)
{
    char *tmp;
    FILE *f;
    MOEMU_CHECK(outfile_open(path, &tmp, &f));
    fprintf(f, "rank,strategy,micro_batches,fate,ttft_ms,tokens_per_ms_per_device,"
               "prefill_tokens_per_ms_per_device,decode_tokens_per_ms_per_device,e2e_ms,"
               "memory_peak_gb,memory_capacity_gb,memory_fraction,comm_share,bubble,"
               "expert_max_over_mean,busiest_device_vs_mean,pareto,host_s,reason\n");
    for (int i = 0; i < s->n_rows; i++) {
        const sweep_row_t *r = &s->rows[i];
        fprintf(f, "%d,%s,%d,", r->rank, r->name, r->micro_batches);
        csv_field(f, sweep_fate_name(r->fate));
        fprintf(f, ",%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.6g,%.6g,%.6g,%.6g,%.6g,%d,%.3f,",
                1e3 * r->ttft, r->tpms_dev, r->prefill_tpms_dev, r->decode_tpms_dev, 1e3 * r->e2e,
                r->mem_peak / 1e9, r->capacity / 1e9,
                r->capacity > 0 ? r->mem_peak / r->capacity : 0, r->comm_share, r->bubble,
                r->imbalance, r->busiest, r->pareto, r->host_s);
        csv_field(f, r->why);
        fputc('\n', f);
    }
    return outfile_commit(path, tmp, f, true);
}

json_t *sweep_json(const sweep_t *s)
{
    json_t *rows = json_array();
    for (int i = 0; i < s->n_rows; i++) {
        const sweep_row_t *r = &s->rows[i];
        json_t *pl = json_null();
        if (r->strategy.n_pp_layers > 0) {
            pl = json_array();
            for (int k = 0; k < r->strategy.n_pp_layers; k++)
                json_array_append_new(pl, json_integer(r->strategy.pp_layers[k]));
        }
        json_array_append_new(
            rows,
            json_pack("{s:i, s:s, s:{s:i, s:i, s:i, s:i, s:b, s:i, s:i, s:i, s:o}, s:i, s:s, "
                      "s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:b}",
                      "rank", r->rank, "strategy", r->name, "degrees", "pp", r->strategy.pp,
                      "dp", r->strategy.dp, "cp", r->strategy.cp, "tp", r->strategy.tp, "sp",
                      r->strategy.sp, "ep", r->strategy.ep, "etp", r->strategy.etp, "edp",
                      par_strategy_edp(&r->strategy), "pp_layers", pl, "micro_batches",
                      r->micro_batches, "fate", sweep_fate_name(r->fate), "reason", r->why,
                      "ttft_s", r->ttft, "tokens_per_ms_per_device", r->tpms_dev,
                      "prefill_tokens_per_ms_per_device", r->prefill_tpms_dev,
                      "decode_tokens_per_ms_per_device", r->decode_tpms_dev, "e2e_s", r->e2e,
                      "memory_peak_bytes", r->mem_peak, "memory_capacity_bytes", r->capacity,
                      "comm_share", r->comm_share, "bubble", r->bubble, "expert_max_over_mean",
                      r->imbalance, "busiest_device_vs_mean", r->busiest, "pareto", r->pareto));
    }
    return json_pack("{s:s, s:{s:i, s:i, s:i, s:i, s:i}, s:o}", "objective",
                     sweep_objective_name(s->objective), "counts", "strategies", s->strategies,
                     "ran", s->ran, "do_not_fit", s->no_fit, "miss_constraints", s->missed,
                     "kept", s->kept, "rows", rows);
}

/* ---- the plot, through gnuplot */

/* gnuplot on PATH, as popen's shell will find it. */
static bool gnuplot_found(void)
{
    const char *path = getenv("PATH");
    if (!path) return false;
    for (const char *p = path;;) {
        const char *e = strchr(p, ':');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char file[4096];
        if (n > 0 && n + 9 < sizeof file) {
            snprintf(file, sizeof file, "%.*s/gnuplot", (int)n, p);
            struct stat sb;
            if (stat(file, &sb) == 0 && S_ISREG(sb.st_mode) && access(file, X_OK) == 0)
                return true;
        }
        if (!e) return false;
        p = e + 1;
    }
}

/* s as a gnuplot single-quoted string (a quote doubled). */
static void gp_string(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', f);
        if (*s != '\n' && *s != '\r') fputc(*s, f);
    }
    fputc('\'', f);
}

static bool ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcasecmp(s + n - m, tail) == 0;
}

static int cmp_ttft(const void *pa, const void *pb)
{
    const sweep_row_t *a = *(const sweep_row_t *const *)pa, *b = *(const sweep_row_t *const *)pb;
    int c = cmp_num(a->ttft, b->ttft);
    return c ? c : cmp_num(b->tpms_dev, a->tpms_dev);
}

/* The commands and data blocks of the plot. */
static moemu_status_t gp_script(FILE *f, const sweep_t *s, const char *out, bool svg,
                                const char *title)
{
    const sweep_row_t **front = malloc(sizeof *front * (size_t)(s->n_rows + 1));
    if (!front) return moemu_fail(MOEMU_ERR_NOMEM, "cannot plot %d candidates", s->n_rows);
    int nf = 0, nkept = 0, nmissed = 0;
    double lo = INFINITY, hi = 0;
    for (int i = 0; i < s->n_rows; i++) {
        const sweep_row_t *r = &s->rows[i];
        if (r->pareto) front[nf++] = r;
        nkept += r->fate == SWEEP_KEPT && !r->pareto;
        nmissed += r->fate == SWEEP_MISSED;
        if (r->fate == SWEEP_NO_FIT || r->ttft <= 0) continue;
        lo = r->ttft < lo ? r->ttft : lo;
        hi = r->ttft > hi ? r->ttft : hi;
    }
    qsort(front, (size_t)nf, sizeof *front, cmp_ttft);
    fprintf(f, "set terminal %s size 1000,650 font 'sans,11'\nset output ",
            svg ? "svg dynamic" : "pngcairo");
    gp_string(f, out);
    fputs("\nset title ", f);
    gp_string(f, title ? title : "moemu sweep");
    fputs(" noenhanced\nset xlabel 'TTFT of the batch (virtual ms)'\n"
          "set ylabel 'throughput per device (tokens per virtual ms)'\n"
          "set grid\nset key outside bottom center horizontal noenhanced\n"
          "set style line 1 lc rgb '#9a9a9a' pt 7 ps 0.6\n"
          "set style line 2 lc rgb '#d0a000' pt 2 ps 0.8\n"
          "set style line 3 lc rgb '#c0002a' lw 2 pt 5 ps 1.2\n",
          f);
    if (hi > 0 && hi / lo > 50) fputs("set logscale x\n", f);
    fputs("$kept << EOD\n", f);
    for (int i = 0; i < s->n_rows; i++)
        if (s->rows[i].fate == SWEEP_KEPT && !s->rows[i].pareto)
            fprintf(f, "%.9g %.9g\n", 1e3 * s->rows[i].ttft, s->rows[i].tpms_dev);
    fputs("EOD\n$missed << EOD\n", f);
    for (int i = 0; i < s->n_rows; i++)
        if (s->rows[i].fate == SWEEP_MISSED)
            fprintf(f, "%.9g %.9g\n", 1e3 * s->rows[i].ttft, s->rows[i].tpms_dev);
    fputs("EOD\n$front << EOD\n", f);
    for (int i = 0; i < nf; i++)
        fprintf(f, "%.9g %.9g \"%s x%d\"\n", 1e3 * front[i]->ttft, front[i]->tpms_dev,
                front[i]->name, front[i]->micro_batches);
    fputs("EOD\nplot ", f);
    free(front);
    const char *sep = "";
    if (nkept) {
        fputs("$kept using 1:2 with points ls 1 title 'candidates'", f);
        sep = ", ";
    }
    if (nmissed) {
        fprintf(f, "%s$missed using 1:2 with points ls 2 title 'misses the constraints'", sep);
        sep = ", ";
    }
    if (nf) {
        fprintf(f, "%s$front using 1:2 with linespoints ls 3 title 'Pareto front', "
                   "$front using 1:2:3 with labels offset 1,0.6 left font ',8' notitle", sep);
        sep = ", ";
    }
    if (!*sep) fputs("NaN notitle", f);
    fputs("\nset output\n", f);
    return MOEMU_OK;
}

moemu_status_t sweep_plot_check(const char *path)
{
    if (!ends_with(path, ".svg") && !ends_with(path, ".png"))
        return moemu_fail(MOEMU_ERR_INVALID, "--plot %s: expected a file name ending in .svg or "
                                             ".png", path);
    if (!gnuplot_found())
        return moemu_fail(MOEMU_ERR_INVALID, "--plot %s needs gnuplot, which is not on PATH: "
                                             "install Debian's gnuplot-nox (apt-get install "
                                             "gnuplot-nox)", path);
    return MOEMU_OK;
}

moemu_status_t sweep_plot(const sweep_t *s, const char *path, const char *title)
{
    MOEMU_CHECK(sweep_plot_check(path));
    bool svg = ends_with(path, ".svg");
    /* the script in a temporary file (its name goes through the shell:
     * mkstemp's characters only), the image to a temporary name beside
     * path, renamed when gnuplot succeeded */
    char *tmp;
    FILE *out;
    MOEMU_CHECK(outfile_open(path, &tmp, &out));
    fclose(out);
    char script[] = "/tmp/moemu-plot-XXXXXX";
    int fd = mkstemp(script);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    moemu_status_t st = MOEMU_OK;
    if (!f) {
        st = moemu_fail(MOEMU_ERR_IO, "cannot write gnuplot's script %s: %s", script,
                        strerror(errno));
        if (fd >= 0) close(fd);
    } else {
        st = gp_script(f, s, tmp, svg, title);
        if ((ferror(f) | fclose(f)) && st == MOEMU_OK)
            st = moemu_fail(MOEMU_ERR_IO, "cannot write gnuplot's script %s: %s", script,
                            strerror(errno));
    }
    if (st == MOEMU_OK) {
        char cmd[64], msg[512] = "";
        snprintf(cmd, sizeof cmd, "gnuplot %s 2>&1", script);
        FILE *gp = popen(cmd, "r");
        size_t m = 0;
        int rc = -1;
        if (gp) {
            for (size_t k; (k = fread(msg + m, 1, sizeof msg - 1 - m, gp)) > 0;) m += k;
            char sink[256];
            while (fread(sink, 1, sizeof sink, gp) > 0) {}
            rc = pclose(gp);
        }
        msg[m] = '\0';
        for (char *p = msg; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
        struct stat sb;
        bool ok = rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0 && stat(tmp, &sb) == 0 &&
                  sb.st_size > 0;
        if (!ok)
            st = moemu_fail(MOEMU_ERR_IO, "--plot %s: gnuplot failed%s%s", path, m ? ": " : "",
                            msg);
        else if (rename(tmp, path) != 0)
            st = moemu_fail(MOEMU_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    if (fd >= 0) unlink(script);
    if (st != MOEMU_OK) unlink(tmp);
    free(tmp);
    return st;
}
