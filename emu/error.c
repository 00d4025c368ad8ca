/* Status strings and the per-thread error message. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "emu/emu_impl.h"

/* The thread's message, or the running coroutine's (emu_err_redirect):
 * a coroutine's message must survive the turns of the others. */
static _Thread_local char emu_errown[EMU_ERRMSG_MAX];
static _Thread_local char *emu_errcur;
static char *emu_errbuf(void) { return emu_errcur ? emu_errcur : emu_errown; }

char *emu_err_redirect(char *buf)
{
    char *old = emu_errcur;
    emu_errcur = buf;
    return old;
}

const char *moemu_strerror(moemu_status_t st)
{
    switch (st) {
    case MOEMU_OK: return "success";
    case MOEMU_ERR_INVALID: return "invalid argument";
    case MOEMU_ERR_IO: return "input/output error";
    case MOEMU_ERR_FORMAT: return "malformed file";
    case MOEMU_ERR_NOMEM: return "host out of memory";
    case MOEMU_ERR_OOM: return "device out of memory";
    case MOEMU_ERR_PEER: return "stopped because another device failed";
    case MOEMU_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

/* Copy src into dst (cap bytes) with control characters as \xNN: names
 * and values from files and flags must not play escape sequences on the
 * user's terminal, nor break the message's one line. Returns the length. */
static size_t emu_escape(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)src; *p && n + 1 < cap; p++) {
        if (*p >= 0x20 && *p != 0x7f) dst[n++] = (char)*p;
        else if (n + 4 < cap) n += (size_t)snprintf(dst + n, cap - n, "\\x%02x", *p);
        else break;
    }
    dst[n] = '\0';
    return n;
}

static void emu_errcopy(const char *src) { emu_escape(emu_errbuf(), EMU_ERRMSG_MAX, src); }

moemu_status_t moemu_fail(moemu_status_t st, const char *fmt, ...)
{
    /* formatted apart first: an argument may be moemu_errmsg() itself */
    char msg[EMU_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emu_errcopy(msg);
    return st;
}

const char *moemu_errmsg(void) { return emu_errbuf(); }

/* printf into buf at *len, never past its end. */
static void emu_append(char *buf, size_t cap, size_t *len, const char *fmt, va_list ap)
{
    if (*len >= cap) return;
    int w = vsnprintf(buf + *len, cap - *len, fmt, ap);
    if (w > 0) *len += (size_t)w;
    if (*len > cap) *len = cap;
}

static void emu_append_sep(moemu_problems_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emu_append(p->buf, sizeof p->buf, &p->len, fmt, ap);
    va_end(ap);
}

/* A problem on a line of its own, escaped now so that the only line
 * breaks in buf are the separators; left out whole when it does not fit. */
static void emu_problem_line(moemu_problems_t *p, const char *fmt, va_list ap)
{
    char raw[sizeof p->buf], esc[sizeof p->buf];
    vsnprintf(raw, sizeof raw, fmt, ap);
    size_t n = emu_escape(esc, sizeof esc, raw);
    if (p->len + 3 + n >= sizeof p->buf) {
        p->dropped++;
        return;
    }
    memcpy(p->buf + p->len, "\n  ", 3);
    memcpy(p->buf + p->len + 3, esc, n + 1);
    p->len += 3 + n;
}

void moemu_problem(moemu_problems_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (p->lines) {
        p->n++;
        emu_problem_line(p, fmt, ap);
        va_end(ap);
        return;
    }
    if (p->n++) emu_append_sep(p, "; ");
    emu_append(p->buf, sizeof p->buf, &p->len, fmt, ap);
    va_end(ap);
}

/* Room kept at the end of the message for the "(N more not shown)" line. */
#define EMU_MORE_ROOM 40

moemu_status_t moemu_fail_problems(moemu_status_t st, const moemu_problems_t *p,
                                   const char *fmt, ...)
{
    char head[EMU_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    if (!p->lines) return moemu_fail(st, "%s: %s", head, p->buf);
    size_t cap = EMU_ERRMSG_MAX - EMU_MORE_ROOM;
    char *buf = emu_errbuf();
    size_t len = emu_escape(buf, cap, head);
    int dropped = p->dropped;
    /* whole lines while they fit: the head may have taken some room */
    for (const char *l = p->buf; *l; ) {
        const char *next = strchr(l + 1, '\n');
        size_t n = next ? (size_t)(next - l) : strlen(l);
        if (len + n < cap) {
            memcpy(buf + len, l, n);
            len += n;
        } else {
            dropped++;
        }
        l += n;
    }
    buf[len] = '\0';
    if (dropped)
        snprintf(buf + len, EMU_ERRMSG_MAX - len, "\n  (%d more not shown)", dropped);
    return st;
}

void moemu_errclear(void) { emu_errbuf()[0] = '\0'; }

static void (*emu_warn_fn)(void *, const char *);
static void *emu_warn_arg;

void moemu_warn_handler(void (*fn)(void *arg, const char *line), void *arg)
{
    emu_warn_fn = fn;
    emu_warn_arg = arg;
}

static atomic_bool emu_strict;

void moemu_set_strict(bool on) { atomic_store(&emu_strict, on); }

bool moemu_strict(void) { return atomic_load(&emu_strict); }

moemu_status_t moemu_warn(const char *fmt, ...)
{
    char raw[2048], line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    if (moemu_strict())
        return moemu_fail(MOEMU_ERR_INVALID, "%s (an error under --strict)", raw);
    emu_escape(line, sizeof line, raw);
    if (emu_warn_fn) emu_warn_fn(emu_warn_arg, line);
    else fprintf(stderr, "moemu: warning: %s\n", line);
    return MOEMU_OK;
}
