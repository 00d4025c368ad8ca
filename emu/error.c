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

moemu_status_t moemu_fail(moemu_status_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(emu_errbuf, sizeof emu_errbuf, fmt, ap);
    va_end(ap);
    return st;
}

const char *moemu_errmsg(void) { return emu_errbuf; }

void moemu_errclear(void) { emu_errbuf[0] = '\0'; }
