/* moemu sweep's worker processes (a sweep_exec_fn): each runs the
 * candidates it is sent, one at a time, over a socket pair (an index in,
 * the row and its status out). Separate processes, not threads: a dry
 * run spends most of its host time in the kernel (device threads meeting
 * in collectives, no-data buffers mapped and unmapped), and in one
 * process the runs would share its address space's lock; measured on 2
 * cores, 2 processes run a sweep 1.46x as fast as one. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "engine/cli/cli.h"

typedef struct {
    int index;
    moemu_status_t st;
    char msg[1024]; /* the error's message when st is not MOEMU_OK */
    sweep_row_t row;
} pool_msg_t;

typedef struct {
    pid_t pid;
    int fd;
    int busy; /* the candidate it runs, -1: none */
} pool_worker_t;

typedef struct {
    sweep_t *s;
    const sweep_opts_t *o;
    pool_worker_t *wk;  /* (started) */
    struct pollfd *pf;  /* (started) */
    pool_msg_t *m;      /* one answer */
    int started, next, busy;
    moemu_status_t st;  /* the first failure */
} pool_t;

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

static __attribute__((noreturn)) void worker_main(int fd, const sweep_t *s)
{
    pool_msg_t m;
    for (int idx; io_full(fd, &idx, sizeof idx, false);) {
        memset(&m, 0, sizeof m);
        m.index = idx;
        m.st = sweep_candidate_run(s, idx, &m.row);
        if (m.st != MOEMU_OK) snprintf(m.msg, sizeof m.msg, "%s", moemu_errmsg());
        if (!io_full(fd, &m, sizeof m, true)) _exit(1);
    }
    _exit(0);
}

/* A worker dies with moemu, however moemu ends (killed too): the kernel
 * kills it when its parent goes; a parent gone before that was asked for
 * is seen by getppid. SIGINT and SIGTERM end it at once, without the
 * parent's handler (the outputs' temporary files are the parent's). */
static void worker_init(pid_t parent)
{
#ifdef PR_SET_PDEATHSIG
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    if (getppid() != parent) _exit(1);
    cli_signals_default();
}

/* Why worker w ended: its exit status or signal. */
static void worker_end(pool_worker_t *w, char *why, size_t n)
{
    int status = 0;
    pid_t p;
    while ((p = waitpid(w->pid, &status, 0)) < 0 && errno == EINTR) {}
    if (p < 0) snprintf(why, n, "lost");
    else if (WIFSIGNALED(status)) snprintf(why, n, "killed by signal %d", WTERMSIG(status));
    else snprintf(why, n, "exit status %d", WEXITSTATUS(status));
    w->pid = -1;
}

static moemu_status_t pool_start(pool_t *p, int jobs)
{
    fflush(NULL); /* nothing buffered is written twice */
    pid_t parent = getpid();
    for (; p->started < jobs; p->started++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
            return moemu_fail(MOEMU_ERR_NOMEM, "cannot connect a sweep worker: %s",
                              strerror(errno));
        pid_t pid = fork();
        if (pid < 0) {
            close(sv[0]);
            close(sv[1]);
            return moemu_fail(MOEMU_ERR_NOMEM, "cannot start a sweep worker: %s",
                              strerror(errno));
        }
        if (pid == 0) {
            worker_init(parent);
            for (int i = 0; i < p->started; i++) close(p->wk[i].fd);
            close(sv[0]);
            worker_main(sv[1], p->s);
        }
        close(sv[1]);
        p->wk[p->started] = (pool_worker_t){.pid = pid, .fd = sv[0], .busy = -1};
    }
    return MOEMU_OK;
}

/* Send worker w the next candidate, unless there is none or the sweep
 * failed; a worker that cannot be sent to stays idle. */
static void pool_feed(pool_t *p, pool_worker_t *w)
{
    if (p->st != MOEMU_OK || p->next >= p->s->n_rows) return;
    if (!io_full(w->fd, &p->next, sizeof p->next, true)) return;
    w->busy = p->next++;
    p->busy++;
}

/* Worker w's answer: its row, or the end of a worker that died. */
static void pool_take(pool_t *p, pool_worker_t *w)
{
    int idx = w->busy;
    pool_msg_t *m = p->m;
    w->busy = -1;
    p->busy--;
    if (!io_full(w->fd, m, sizeof *m, false) || m->index != idx) {
        char why[64];
        close(w->fd);
        w->fd = -1;
        worker_end(w, why, sizeof why);
        if (p->st == MOEMU_OK)
            p->st = moemu_fail(MOEMU_ERR_INTERNAL, "sweep worker stopped (%s) while running "
                               "%s x%d", why, p->s->rows[idx].name,
                               p->s->rows[idx].micro_batches);
        return;
    }
    if (m->st != MOEMU_OK && p->st == MOEMU_OK) p->st = moemu_fail(m->st, "%s", m->msg);
    else if (p->st == MOEMU_OK) sweep_candidate_done(p->s, &m->row, p->o);
    pool_feed(p, w);
}

/* Take answers until no worker is busy; a second without one is a
 * progress tick (row NULL), so that a long candidate shows progress. */
static void pool_drain(pool_t *p)
{
    while (p->busy > 0) {
        int np = 0, ready;
        for (int i = 0; i < p->started; i++)
            if (p->wk[i].busy >= 0)
                p->pf[np++] = (struct pollfd){.fd = p->wk[i].fd, .events = POLLIN};
        if ((ready = poll(p->pf, (nfds_t)np, 1000)) == 0) {
            if (p->o->progress) p->o->progress(p->o->progress_arg, p->s->ran, p->s->n_rows, NULL);
            continue;
        }
        if (ready < 0) {
            if (errno == EINTR) continue;
            if (p->st == MOEMU_OK)
                p->st = moemu_fail(MOEMU_ERR_INTERNAL, "sweep: poll: %s", strerror(errno));
            return;
        }
        for (int k = 0; k < np; k++)
            for (int i = 0; i < p->started && p->pf[k].revents; i++)
                if (p->wk[i].fd == p->pf[k].fd && p->wk[i].busy >= 0) {
                    pool_take(p, &p->wk[i]);
                    break;
                }
    }
}

/* Every worker reads the end of its socket and leaves. */
static void pool_stop(pool_t *p)
{
    for (int i = 0; i < p->started; i++) {
        char why[64];
        if (p->wk[i].fd >= 0) close(p->wk[i].fd);
        if (p->wk[i].pid > 0) worker_end(&p->wk[i], why, sizeof why);
    }
}

moemu_status_t cli_sweep_workers(void *arg, sweep_t *s, const sweep_opts_t *o)
{
    int jobs = *(const int *)arg;
    jobs = jobs < s->n_rows ? jobs : s->n_rows;
    jobs = jobs > 0 ? jobs : 1;
    pool_t p = {.s = s, .o = o, .wk = calloc((size_t)jobs, sizeof *p.wk),
                .pf = calloc((size_t)jobs, sizeof *p.pf), .m = malloc(sizeof *p.m)};
    if (!p.wk || !p.pf || !p.m) p.st = moemu_fail(MOEMU_ERR_NOMEM, "cannot start %d sweep "
                                                  "workers", jobs);
    if (p.st == MOEMU_OK) p.st = pool_start(&p, jobs);
    for (int i = 0; i < p.started; i++) pool_feed(&p, &p.wk[i]);
    pool_drain(&p);
    pool_stop(&p);
    free(p.wk);
    free(p.pf);
    free(p.m);
    return p.st;
}
