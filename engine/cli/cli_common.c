/* What the subcommands share besides their options: errors, number
 * parsing, hardware, outputs and signals, progress. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/cli/cli.h"

int cli_error(void)
{
    cli_progress_done();
    /* an MPI job's failures reach rank 0, which prints them once */
    if (par_proc_rank() == 0) fprintf(stderr, "moemu: error: %s\n", moemu_errmsg());
    return CLI_EXIT_ERROR;
}

moemu_status_t cli_parse_int(const char *flag, const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0 || v < lo || v > hi)
        return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected a whole number in [%d, %d]",
                          flag, s, lo, hi);
    *out = (int)v;
    return MOEMU_OK;
}

moemu_status_t cli_parse_u64(const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    /* strtoull skips blanks and takes a sign: " -1" would be 2^64 - 1 */
    if (end == s || *end != '\0' || errno != 0 || !isdigit((unsigned char)s[0]))
        return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected a non-negative whole number",
                          flag, s);
    *out = v;
    return MOEMU_OK;
}

run_prec_t cli_prec(const cli_shared_t *sh)
{
    return (run_prec_t){.dispatch_fp8 = sh->dispatch_fp8, .compute = (run_compute_t)sh->compute,
                        .kv_fp8 = sh->kv_fp8};
}

moemu_status_t cli_load_model(cfg_model_t *c, const cli_shared_t *sh)
{
    MOEMU_CHECK(cfg_load(c, sh->model));
    if (sh->weight_store == 1 || (sh->weight_store == 0 && sh->compute == RUN_COMPUTE_FP8))
        cfg_store_fp8(c);
    if (sh->weight_store == 2) cfg_store_dtype(c);
    return MOEMU_OK;
}

moemu_status_t cli_load_hw(const cli_shared_t *sh, int devices, emu_hw_t *out, int *used)
{
    const char *engine = sh->engine;
    MOEMU_CHECK(emu_hw_load(sh->hw, out));
    bool found = false;
    if (engine) MOEMU_CHECK(emu_engine_apply(engine, out, &found));
    if (engine && !found)
        return moemu_fail(MOEMU_ERR_INVALID, "--engine %s: the profile has no figures for card "
                          "'%s' (fit them: moemu calibrate MEASUREMENTS.csv --engine %s --hw %s "
                          "--out FILE)", engine, out->name, engine, sh->hw);
    if (sh->overlap)
        MOEMU_CHECK(emu_stack_set(&out->spec.stack, "overlap", sh->overlap, "--overlap"));
    if (sh->dispatcher)
        MOEMU_CHECK(emu_stack_set(&out->spec.stack, "dispatcher", sh->dispatcher, "--dispatcher"));
    if (sh->kernels)
        MOEMU_CHECK(emu_stack_set(&out->spec.stack, "kernels", sh->kernels, "--kernels"));
    if (sh->devices_per_node) out->topo.devices_per_node = sh->devices_per_node;
    if (sh->nodes) out->topo.nodes = sh->nodes;
    int n;
    return emu_topo_nodes(&out->topo, devices, used ? used : &n);
}

/* A checkpoint's files in a --weights directory (engine/models/checkpoint.h). */
static bool reads_checkpoint(const char *name)
{
    size_t n = strlen(name);
    return strcmp(name, "model.safetensors.index.json") == 0 ||
           (n > 12 && strcmp(name + n - 12, ".safetensors") == 0);
}

#define CLI_MAX_OUTPUTS 16

moemu_status_t cli_outputs_check(const cli_shared_t *sh, const outfile_arg_t *outs, int n_out,
                                 const outfile_arg_t *more_in)
{
    outfile_arg_t out[CLI_MAX_OUTPUTS] = {{.flag = "--json", .path = sh->json},
                                          {.flag = "--csv", .path = sh->csv}};
    int n = 2;
    for (int i = 0; i < n_out && n < CLI_MAX_OUTPUTS; i++) out[n++] = outs[i];
    const char *r = sh->routing;
    outfile_arg_t in[] = {
        {.flag = "--model", .path = sh->model},
        {.flag = "--weights", .path = sh->weights, .reads = reads_checkpoint},
        {.flag = "--tokens", .path = sh->wl.tokens_file},
        {.flag = "--hw", .path = sh->hw},
        {.flag = "--routing", .path = r && !strncmp(r, "replay:", 7) ? r + 7 : NULL},
        more_in ? *more_in : (outfile_arg_t){0},
    };
    return outfile_check(out, n, in, (int)(sizeof in / sizeof in[0]));
}

int cli_outputs_end(int rc)
{
    moemu_status_t st = outfile_end(rc == CLI_EXIT_ERROR ? MOEMU_ERR_INVALID : MOEMU_OK);
    if (st != MOEMU_OK && rc != CLI_EXIT_ERROR) return cli_error();
    return rc;
}

static const int cli_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
#define CLI_NSIGNALS (int)(sizeof cli_signals / sizeof cli_signals[0])

/* Async-signal-safe: unlink, rmdir, write, signal and raise only. */
static void on_signal(int sig)
{
    outfile_remove_all();
    const char *note = par_proc_stop_note();
    if (note[0] && write(STDERR_FILENO, note, strlen(note)) < 0) {
        /* nothing more to do on the way out */
    }
    signal(sig, SIG_DFL);
    raise(sig); /* delivered as the handler returns: the default, the end */
}

void cli_signals_catch(void)
{
    struct sigaction sa = {.sa_handler = on_signal}, old;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < CLI_NSIGNALS; i++) {
        /* a signal ignored at start (nohup, a background job) stays so */
        if (sigaction(cli_signals[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(cli_signals[i], &sa, NULL);
    }
}

void cli_signals_default(void)
{
    struct sigaction old;
    for (int i = 0; i < CLI_NSIGNALS; i++)
        if (sigaction(cli_signals[i], NULL, &old) == 0 && old.sa_handler == on_signal)
            signal(cli_signals[i], SIG_DFL);
}

static bool progress_shown;

void cli_progress(void *arg, const char *phase, int step, int steps, int layer, int layers)
{
    (void)arg;
    if (!isatty(STDERR_FILENO)) return;
    fprintf(stderr, "\r%s %d/%d, layer %d/%d   ", phase, step, steps, layer + 1, layers);
    fflush(stderr);
    progress_shown = true;
}

void cli_progress_done(void)
{
    if (progress_shown) fprintf(stderr, "\r%60s\r", "");
    progress_shown = false;
}

void cli_stack_text(const emu_stack_t *sk, char *buf, size_t n)
{
    const emu_stack_t plain = {0};
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; emu_stack_key(i) && len < n; i++) {
        const char *k = emu_stack_key(i), *v = emu_stack_name(sk, k);
        if (strcmp(v, emu_stack_name(&plain, k)) != 0)
            len += (size_t)snprintf(buf + len, n - len, ", %s %s", k, v);
    }
}
