/* The options that moemu's commands share, defined once (name, argument,
 * help, where the value goes), and the one parser and help printer that
 * every command runs over its list: the shared options it takes, by name,
 * and its own. */
#include <getopt.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cli/cli.h"

#define SH(field) offsetof(cli_shared_t, field)
#define CLI_MAX_COUNT (1 << 20) /* devices, sequences, tokens, ... */

const cli_opt_t cli_shared_options[] = {
    {.name = "model", .arg = "NAME|FILE", .type = CLI_STR, .off = SH(model),
     .help = "built-in model (tiny, moe-10b-plan, moe-30b-plan)\n"
             "or a Hugging Face config.json (default moe-10b-plan)"},
    {.name = "seed", .arg = "N", .type = CLI_U64, .off = SH(seed),
     .help = "seed of generated weights, prompt lengths and\nprompt tokens (default 0)"},
    {.name = "weights", .arg = "PATH", .type = CLI_STR, .off = SH(weights),
     .help = "load the weights instead of generating them: a\ncheckpoint of the model's family as the Hub ships\nit (a .safetensors file, a directory of shards or\ntheir model.safetensors.index.json)"},
    {.name = "batch", .arg = "B", .type = CLI_INT, .off = SH(wl.batch), .lo = 1,
     .hi = CLI_MAX_COUNT, .field = "batch",
     .help = "sequences (default 4, or as many as --prompt-lens\nor --tokens give)"},
    {.name = "prompt-len", .arg = "L", .type = CLI_INT, .off = SH(wl.prompt_len), .lo = 1,
     .hi = 1 << 24, .help = "every prompt L tokens (default 128)"},
    {.name = "prompt-lens", .arg = "a,b,...", .type = CLI_STR, .off = SH(wl.lens),
     .field = "prompt lengths", .help = "one length per sequence"},
    {.name = "prompt-len-range", .arg = "MIN:MAX", .type = CLI_STR, .off = SH(wl.range),
     .field = "prompt length range", .help = "lengths drawn uniformly (seeded)"},
    {.name = "tokens", .arg = "FILE", .type = CLI_STR, .off = SH(wl.tokens_file),
     .field = "tokens file", .help = "prompts from a JSON list of lists of token ids"},
    {.name = "decode", .arg = "N", .type = CLI_INT, .off = SH(wl.decode), .lo = 0,
     .hi = CLI_MAX_COUNT, .field = "decode",
     .help = "tokens generated per sequence (default 16); the\n"
             "first comes from the prefill, then N-1 decode passes"},
    {.name = "strategy", .arg = "S", .type = CLI_STR, .off = SH(strategy),
     .help = "parallel strategy: e.g. dp2-tp2-ep4, EP8_TP2_PP1_DP1,\n"
             "'dp4 pp4 ep16 sp', or JSON {\"tp\":2,\"ep\":4}\n(docs/strategies.md)"},
    {.name = "devices", .arg = "N", .type = CLI_INT, .off = SH(devices), .lo = 1,
     .hi = CLI_MAX_COUNT, .help = "devices (default: PP*DP*CP*TP of the strategy)"},
    {.name = "pp-layers", .arg = "a,b,...", .type = CLI_STR, .off = SH(pp_layers),
     .help = "layers per pipeline stage, an uneven split"},
    {.name = "micro-batches", .arg = "M", .type = CLI_INT, .off = SH(micro_batches), .lo = 1,
     .hi = CLI_MAX_COUNT, .field = "micro_batches",
     .help = "micro-batches per DP replica (default 1)"},
    {.name = "hw", .arg = "NAME|FILE", .type = CLI_STR, .off = SH(hw),
     .help = "hardware preset or JSON file (default\n" CLI_DEFAULT_HW "; `moemu hw` lists them)"},
    {.name = "engine", .arg = "NAME|FILE", .type = CLI_STR, .off = SH(engine),
     .help = "an engine profile's figures for the card over the\npreset's (vllm, trtllm: hw/engines)"},
    {.name = "overlap", .arg = "MODE", .type = CLI_STR, .off = SH(overlap),
     .help = "what runs beside communication: none,\n"
             "shared-experts (Megatron's: the shared experts\n"
             "compute while the routed rows travel), or two-batch\n"
             "(SGLang's and DeepSeek's: micro-batches in pairs,\n"
             "one computes while the other's rows travel; PP = 1,\n"
             "--micro-batches 2 or more); default: the engine\n"
             "profile's, else none"},
    {.name = "dispatcher", .arg = "KIND", .type = CLI_STR, .off = SH(dispatcher),
     .help = "how tokens reach their experts: all-to-all,\n"
             "all-gather (Megatron's: the EP group gathers every\n"
             "row, a reduce-scatter sums the outputs back), or\n"
             "deepep (DeepEP's normal mode: a row once to each\n"
             "member holding one of its choices), deepep-ll (its\n"
             "low-latency mode: a row to each chosen expert, the\n"
             "counts in band, no host synchronisation) or\n"
             "deepep-auto (SGLang's: normal in prefill, low-latency\n"
             "in decode); default: the engine profile's, else\n"
             "all-to-all"},
    {.name = "kernels", .arg = "MODE", .type = CLI_STR, .off = SH(kernels),
     .help = "kernels launched for the projections: separate (one\n"
             "per weight matrix, as Hugging Face runs them) or\n"
             "fused (q, k and v as one product, gate and up as one,\n"
             "as vLLM, TensorRT-LLM and Megatron-Core launch them);\n"
             "default: the engine profile's, else separate"},
    {.name = "nodes", .arg = "K", .type = CLI_INT, .off = SH(nodes), .lo = 1,
     .hi = CLI_MAX_COUNT, .help = "nodes (default: as many as the devices need)"},
    {.name = "devices-per-node", .arg = "D", .type = CLI_INT, .off = SH(devices_per_node),
     .lo = 1, .hi = CLI_MAX_COUNT, .help = "override the preset's devices per node"},
    {.name = "routing", .arg = "SPEC", .type = CLI_STR, .off = SH(routing), .field = "routing",
     .help = "a dry run's router: uniform (default), zipf:S, or\n"
             "replay:FILE from --record-routing"},
    {.name = "weight-dtype", .arg = "config|fp8|dtype", .type = CLI_CHOICE,
     .choices = "config|fp8|dtype", .off = SH(weight_store),
     .help = "the weights' storage: as the config says (default),\n"
             "fp8 e4m3 with a scale per 128 x 128 block, as\n"
             "DeepSeek-V3's checkpoints (the embedding, lm_head,\n"
             "norms, biases and router stay in the dtype; generated\n"
             "weights are then rounded to what FP8 stores), or\n"
             "all in the model's dtype (no FP8 or MXFP4 storage)"},
    {.name = "dispatch-dtype", .arg = "dtype|fp8", .type = CLI_CHOICE, .choices = "dtype|fp8",
     .off = SH(dispatch_fp8),
     .help = "the MoE dispatch's rows counted in the model's dtype\n"
             "(default) or in fp8 e4m3 with a scale per 128 values,\n"
             "as DeepSeek-V3 dispatches (the combine stays in the\n"
             "dtype; the values are not rounded)"},
    {.name = "compute-dtype", .arg = "auto|dtype|fp8", .type = CLI_CHOICE,
     .choices = "auto|dtype|fp8", .off = SH(compute),
     .help = "what the products of FP8-stored weights compute in:\n"
             "FP8 at the card's FP8 peak where it has FP8 Tensor\n"
             "Cores, else the dtype (auto, default); the dtype\n"
             "(weight-only FP8); or FP8 (stores the weights in\n"
             "fp8 unless --weight-dtype says otherwise; refused\n"
             "on a card without FP8, such as a100-80g)"},
    {.name = "kv-dtype", .arg = "dtype|fp8", .type = CLI_CHOICE, .choices = "dtype|fp8",
     .off = SH(kv_fp8),
     .help = "the KV cache in the model's dtype (default) or in\n"
             "fp8 e4m3, one byte a value (its capacity and reads;\n"
             "the values are not rounded)"},
    {.name = "strict", .type = CLI_SET, .off = SH(strict),
     .help = "every warning is an error (exit 2): keys a config\n"
             "holds that moemu does not read, implausible values\n"
             "of configs and hardware; for CI"},
    {.name = "devices-per-process", .arg = "D", .type = CLI_INT, .off = SH(devices_per_process),
     .lo = 1, .hi = CLI_MAX_COUNT,
     .help = "under mpirun, devices per process in contiguous\n"
             "blocks (default: the devices split evenly over the\n"
             "processes; docs/mpi.md)"},
    {.name = "json", .arg = "FILE", .type = CLI_STR, .off = SH(json),
     .help = "the same as JSON"},
    {.name = "csv", .arg = "FILE", .type = CLI_STR, .off = SH(csv),
     .help = "the same as CSV"},
    {.name = NULL},
};

void cli_shared_init(cli_shared_t *sh)
{
    *sh = (cli_shared_t){.model = "moe-10b-plan", .hw = CLI_DEFAULT_HW, .micro_batches = 1,
                         .wl = {.decode = 16}};
}

/* The definition o stands for: a shared option's, with the command's
 * wording of its help when it gives one; NULL for a name not shared. */
static bool resolve(const cli_opt_t *o, cli_opt_t *out)
{
    *out = *o;
    if (o->type != CLI_SHARED) return true;
    for (const cli_opt_t *s = cli_shared_options; s->name; s++)
        if (!strcmp(s->name, o->name)) {
            *out = *s;
            if (o->help) out->help = o->help;
            return true;
        }
    return false;
}

static moemu_status_t parse_num(const char *flag, const char *s, const cli_opt_t *o,
                                double *out)
{
    char *end;
    double v = strtod(s, &end);
    bool below = o->type == CLI_NUM_BELOW;
    if (end != s && *end == '\0' && isfinite(v) && v >= o->lo && (below ? v < o->hi : v <= o->hi)) {
        *out = v;
        return MOEMU_OK;
    }
    if (isinf(o->hi))
        return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected a number >= %g", flag, s, o->lo);
    return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected a number in [%g, %g%c", flag, s,
                      o->lo, o->hi, below ? ')' : ']');
}

/* The index of s among o->choices ("real|skip"). */
static moemu_status_t parse_choice(const char *flag, const char *s, const cli_opt_t *o,
                                   int *out)
{
    int i = 0;
    for (const char *p = o->choices;; i++) {
        size_t n = strcspn(p, "|");
        if (strlen(s) == n && !strncmp(p, s, n)) {
            *out = i;
            return MOEMU_OK;
        }
        if (!p[n]) break;
        p += n + 1;
    }
    /* "a|b|c" read out as "a, b or c" */
    char list[256] = "";
    for (const char *p = o->choices; *p; p++) {
        size_t k = strlen(list);
        const char *sep = *p != '|' ? NULL : strchr(p + 1, '|') ? ", " : " or ";
        if (sep) {
            snprintf(list + k, sizeof list - k, "%s", sep);
        } else if (k + 1 < sizeof list) {
            list[k] = *p;
            list[k + 1] = '\0';
        }
    }
    return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected %s", flag, s, list);
}

/* Store the argument of option o (its value lives at base + o->off). */
static moemu_status_t store(const cli_opt_t *o, const char *arg, void *base)
{
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", o->name);
    void *at = (char *)base + o->off;
    switch (o->type) {
    case CLI_STR: *(const char **)at = arg; return MOEMU_OK;
    case CLI_SET: *(bool *)at = true; return MOEMU_OK;
    case CLI_INT: return cli_parse_int(flag, arg, (int)o->lo, (int)o->hi, at);
    case CLI_U64: return cli_parse_u64(flag, arg, at);
    case CLI_NUM:
    case CLI_NUM_BELOW: return parse_num(flag, arg, o, at);
    case CLI_CHOICE: return parse_choice(flag, arg, o, at);
    case CLI_CALL: return cli_flag_names(o->parse(arg, base), (const cli_opt_t[]){*o, {0}});
    case CLI_SHARED:
    case CLI_HEADING: break;
    }
    return moemu_fail(MOEMU_ERR_INTERNAL, "%s: no way to read it", flag);
}

/* getopt_long's table for opts, each option's definition and where its
 * value goes (sh or own); --help is 'h'. */
typedef struct {
    struct option *lo;
    cli_opt_t *def;
    void **base;
    int n;
} cli_table_t;

static moemu_status_t table_build(cli_table_t *t, const char *cmd, const cli_opt_t *opts,
                                  cli_shared_t *sh, void *own)
{
    size_t n = 0;
    while (opts[n].name || opts[n].type == CLI_HEADING) n++;
    *t = (cli_table_t){.lo = calloc(n + 2, sizeof *t->lo), .def = calloc(n + 1, sizeof *t->def),
                       .base = calloc(n + 1, sizeof *t->base)};
    if (!t->lo || !t->def || !t->base) return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", cmd);
    for (size_t i = 0; i < n; i++) {
        if (opts[i].type == CLI_HEADING) continue;
        cli_opt_t *d = &t->def[t->n];
        if (!resolve(&opts[i], d))
            return moemu_fail(MOEMU_ERR_INTERNAL, "%s: no shared option --%s", cmd, opts[i].name);
        t->base[t->n] = opts[i].type == CLI_SHARED ? (void *)sh : own;
        t->lo[t->n] = (struct option){d->name, d->type == CLI_SET ? no_argument
                                                                 : required_argument,
                                      NULL, 256 + t->n};
        t->n++;
    }
    t->lo[t->n] = (struct option){"help", no_argument, NULL, 'h'};
    return MOEMU_OK;
}

static void table_free(cli_table_t *t)
{
    free(t->lo);
    free(t->def);
    free(t->base);
}

moemu_status_t cli_parse(const char *cmd, int argc, char **argv, const cli_opt_t *opts,
                         cli_shared_t *sh, void *own, bool *help, int *first)
{
    cli_table_t t;
    moemu_status_t st = table_build(&t, cmd, opts, sh, own);
    *help = false;
    opterr = 0;
    optind = 1;
    for (int c; st == MOEMU_OK && !*help && (c = getopt_long(argc, argv, "", t.lo, NULL)) != -1;) {
        if (c == 'h') *help = true;
        else if (c >= 256 && c - 256 < t.n) st = store(&t.def[c - 256], optarg, t.base[c - 256]);
        else st = moemu_fail(MOEMU_ERR_INVALID, "%s: unknown or incomplete option '%s' (see %s "
                             "--help)", cmd, argv[optind - 1], cmd);
    }
    *first = optind;
    table_free(&t);
    if (st == MOEMU_OK && sh->strict) moemu_set_strict(true);
    if (st == MOEMU_OK) st = par_proc_set_devices_per_process(sh->devices_per_process);
    return st;
}

moemu_status_t cli_check_workload(const cli_shared_t *sh)
{
    const wl_opts_t *w = &sh->wl;
    if ((w->prompt_len > 0) + !!w->lens + !!w->range + !!w->tokens_file > 1)
        return moemu_fail(MOEMU_ERR_INVALID, "give only one of --prompt-len, --prompt-lens, "
                                             "--prompt-len-range and --tokens");
    return MOEMU_OK;
}

moemu_status_t cli_no_operands(const char *cmd, int argc, char **argv, int first)
{
    if (first < argc)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: unexpected argument '%s'", cmd, argv[first]);
    return MOEMU_OK;
}

/* "  --name ARG" in a column of 23, or on a line of its own when longer;
 * the help's lines after it, each indented to the column. */
static void help_option(FILE *f, const cli_opt_t *o)
{
    char left[64];
    snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
    if (strlen(left) > 22) fprintf(f, "  %s\n%25s", left, "");
    else fprintf(f, "  %-22s ", left);
    for (const char *h = o->help; *h; h++) {
        fputc(*h, f);
        if (*h == '\n') fprintf(f, "%25s", "");
    }
    fputc('\n', f);
}

void cli_help(FILE *f, const cli_opt_t *opts)
{
    for (const cli_opt_t *o = opts; o->name || o->type == CLI_HEADING; o++) {
        cli_opt_t d;
        if (o->type == CLI_HEADING) fprintf(f, "%s\n", o->help);
        else if (resolve(o, &d) && d.help) help_option(f, &d);
    }
    fprintf(f, "  %-22s this text\n", "--help");
}

moemu_status_t cli_flag_names(moemu_status_t st, const cli_opt_t *opts)
{
    const char *msg = moemu_errmsg();
    for (const cli_opt_t *o = opts; st != MOEMU_OK && (o->name || o->type == CLI_HEADING); o++) {
        cli_opt_t d;
        if (o->type == CLI_HEADING || !resolve(o, &d) || !d.field) continue;
        size_t n = strlen(d.field);
        if (strncmp(msg, d.field, n) == 0 && (msg[n] == ' ' || msg[n] == ':')) {
            char rest[1024];
            snprintf(rest, sizeof rest, "%s", msg + n);
            return moemu_fail(st, "--%s%s", d.name, rest);
        }
    }
    return st;
}
