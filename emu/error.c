/* Status strings and the per-thread error message. */
#include <stdarg.h>
#include <stdio.h>

#include "emu/emu.h"

static _Thread_local char emu_errbuf[1024];

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

/* Copy src into emu_errbuf with control characters as \xNN: names and
 * values from files and flags must not play escape sequences on the
 * user's terminal, nor break a message's lines. A newline followed by two
 * spaces stays: it starts the next problem of a message of several. */
static void emu_errcopy(const char *src)
{
    size_t n = 0, cap = sizeof emu_errbuf;
    for (const unsigned char *p = (const unsigned char *)src; *p && n + 1 < cap; p++) {
        if ((*p >= 0x20 && *p != 0x7f) || (*p == '\n' && p[1] == ' ' && p[2] == ' '))
            emu_errbuf[n++] = (char)*p;
        else if (n + 4 < cap) n += (size_t)snprintf(emu_errbuf + n, cap - n, "\\x%02x", *p);
        else break;
    }
    emu_errbuf[n] = '\0';
}

moemu_status_t moemu_fail(moemu_status_t st, const char *fmt, ...)
{
    /* formatted apart first: an argument may be moemu_errmsg() itself */
    char msg[sizeof emu_errbuf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emu_errcopy(msg);
    return st;
}

const char *moemu_errmsg(void) { return emu_errbuf; }

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

void moemu_problem(moemu_problems_t *p, const char *fmt, ...)
{
    if (p->n++) emu_append_sep(p, "%s", p->sep ? p->sep : "; ");
    va_list ap;
    va_start(ap, fmt);
    emu_append(p->buf, sizeof p->buf, &p->len, fmt, ap);
    va_end(ap);
}

void moemu_errclear(void) { emu_errbuf[0] = '\0'; }

static void (*emu_warn_fn)(void *, const char *);
static void *emu_warn_arg;

void moemu_warn_handler(void (*fn)(void *arg, const char *line), void *arg)
{
    emu_warn_fn = fn;
    emu_warn_arg = arg;
}

void moemu_warn(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (emu_warn_fn) emu_warn_fn(emu_warn_arg, line);
    else fprintf(stderr, "moemu: warning: %s\n", line);
}
