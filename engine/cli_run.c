/* moemu run: build the model and the workload, prefill, decode greedily,
 * print a summary; optionally dump logits, weights and a JSON record. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/cli.h"
#include "engine/safetensors.h"

static const char run_help[] =
    "usage: moemu run [OPTIONS]\n"
    "\n"
    "Run a batch of prompts through the model on one device: prefill, then\n"
    "greedy decoding, and print tokens, wall time, tokens/s and GFLOP/s.\n"
    "\n"
    "model and weights:\n"
    "  --model NAME|FILE      built-in model (tiny, moe-10b-plan, moe-30b-plan)\n"
    "                         or a Hugging Face config.json (default moe-10b-plan)\n"
    "  --seed N               seed of generated weights, prompt lengths and\n"
    "                         prompt tokens (default 0)\n"
    "  --weights FILE         load weights from safetensors (Mixtral names)\n"
    "                         instead of generating them\n"
    "workload:\n"
    "  --batch B              sequences (default 4, or as many as --prompt-lens\n"
    "                         or --tokens give)\n"
    "  --prompt-len L         every prompt L tokens (default 128)\n"
    "  --prompt-lens a,b,...  one length per sequence\n"
    "  --prompt-len-range MIN:MAX\n"
    "                         lengths drawn uniformly (seeded)\n"
    "  --tokens FILE          prompts from a JSON list of lists of token ids\n"
    "  --decode N             tokens generated per sequence (default 16); the\n"
    "                         first comes from the prefill, then N-1 decode passes\n"
    "outputs:\n"
    "  --dump-logits FILE     safetensors with one F32 tensor `logits`\n"
    "                         [batch, max prompt length, vocab] of every prompt\n"
    "                         position (NaN past a shorter prompt's end)\n"
    "  --dump-weights FILE    write the weights (safetensors, Mixtral names,\n"
    "                         in the model's dtype)\n"
    "  --json FILE            the generated token ids and the summary\n"
    "  --help                 this text\n";

typedef struct {
    const char *model;
    const char *weights;
    uint64_t seed;
    wl_opts_t wl;
    const char *dump_logits, *dump_weights, *json;
} run_opts_t;

enum {
    OPT_MODEL = 256, OPT_SEED, OPT_WEIGHTS, OPT_BATCH, OPT_PROMPT_LEN, OPT_PROMPT_LENS,
    OPT_PROMPT_RANGE, OPT_TOKENS, OPT_DECODE, OPT_DUMP_LOGITS, OPT_DUMP_WEIGHTS, OPT_JSON,
    OPT_HELP
};

static const struct option run_options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"seed", required_argument, NULL, OPT_SEED},
    {"weights", required_argument, NULL, OPT_WEIGHTS},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"prompt-len", required_argument, NULL, OPT_PROMPT_LEN},
    {"prompt-lens", required_argument, NULL, OPT_PROMPT_LENS},
    {"prompt-len-range", required_argument, NULL, OPT_PROMPT_RANGE},
    {"tokens", required_argument, NULL, OPT_TOKENS},
    {"decode", required_argument, NULL, OPT_DECODE},
    {"dump-logits", required_argument, NULL, OPT_DUMP_LOGITS},
    {"dump-weights", required_argument, NULL, OPT_DUMP_WEIGHTS},
    {"json", required_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static moemu_status_t parse(run_opts_t *o, int argc, char **argv, bool *help)
{
    *o = (run_opts_t){.model = "moe-10b-plan", .wl = {.decode = 16}};
    bool batch_set = false;
    long v;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", run_options, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: o->model = optarg; break;
        case OPT_SEED: MOEMU_CHECK(cli_parse_u64("--seed", optarg, &o->seed)); break;
        case OPT_WEIGHTS: o->weights = optarg; break;
        case OPT_BATCH:
            MOEMU_CHECK(cli_parse_int("--batch", optarg, 1, 1 << 20, &v));
            o->wl.batch = (int)v;
            batch_set = true;
            break;
        case OPT_PROMPT_LEN:
            MOEMU_CHECK(cli_parse_int("--prompt-len", optarg, 1, 1 << 24, &v));
            o->wl.prompt_len = (int)v;
            break;
        case OPT_PROMPT_LENS: o->wl.lens = optarg; break;
        case OPT_PROMPT_RANGE: o->wl.range = optarg; break;
        case OPT_TOKENS: o->wl.tokens_file = optarg; break;
        case OPT_DECODE:
            MOEMU_CHECK(cli_parse_int("--decode", optarg, 0, 1 << 20, &v));
            o->wl.decode = (int)v;
            break;
        case OPT_DUMP_LOGITS: o->dump_logits = optarg; break;
        case OPT_DUMP_WEIGHTS: o->dump_weights = optarg; break;
        case OPT_JSON: o->json = optarg; break;
        case OPT_HELP: *help = true; return MOEMU_OK;
        default:
            return moemu_fail(MOEMU_ERR_INVALID, "moemu run: unknown or incomplete option '%s' "
                                                 "(see moemu run --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu run: unexpected argument '%s'", argv[optind]);
    if (!batch_set && !o->wl.lens && !o->wl.tokens_file) o->wl.batch = 4;
    o->wl.seed = o->seed;
    return MOEMU_OK;
}

static moemu_status_t dump_logits(const char *path, const model_out_t *out, const wl_t *wl,
                                  int V)
{
    st_write_tensor_t t = {.name = "logits", .ndim = 3,
                           .shape = {wl->batch, wl->max_len, V}, .data = out->prompt_logits};
    return st_write(path, &t, 1, ST_F32);
}

static moemu_status_t write_json(const char *path, const cfg_model_t *cfg, const wl_t *wl,
                                 const model_out_t *out, json_t *summary)
{
    json_t *gen = json_array();
    for (int b = 0; b < wl->batch; b++) {
        json_t *seq = json_array();
        for (int i = 0; i < wl->decode; i++)
            json_array_append_new(seq, json_integer(out->generated[(int64_t)b * wl->decode + i]));
        json_array_append_new(gen, seq);
    }
    json_t *root = json_pack("{s:s, s:o, s:O}", "model", cfg->name, "generated", gen,
                             "summary", summary);
    moemu_status_t st = cli_write_json(path, root);
    json_decref(root);
    return st;
}

static double device_flops(const emu_dev_t *dev)
{
    double f = 0;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) f += emu_dev_kernel_stats(dev, k)->flops;
    return f;
}

static int run(const run_opts_t *o)
{
    cfg_model_t cfg;
    wl_t wl = {0};
    wts_t w = {0};
    model_out_t out = {0};
    emu_dev_t *dev = NULL;
    json_t *summary = NULL;
    int rc = CLI_EXIT_ERROR;
    if (cfg_load(&cfg, o->model) != MOEMU_OK) return cli_error();
    if (wl_make(&wl, &o->wl, &cfg) != MOEMU_OK) return cli_error();
    moemu_status_t st = o->weights ? wts_load(&w, &cfg, o->weights)
                                   : wts_generate_all(&w, &cfg, o->seed);
    if (st == MOEMU_OK && o->dump_weights) st = wts_dump(&w, o->dump_weights);
    /* one device with no emulated limits: the budgets do not matter here */
    emu_spec_t spec = {.peak_flops = 1e15, .mfu = 1, .mem_bw = 1e12, .bw_util = 1,
                       .mem_capacity = 1e15, .launch_s = 0};
    if (st == MOEMU_OK) st = emu_dev_create(&spec, 0, true, &dev);
    model_opts_t mo = {.prompt_logits = o->dump_logits != NULL, .progress = cli_progress};
    if (st == MOEMU_OK) st = model_generate(&out, &w, &wl, dev, &mo);
    cli_progress_done();
    if (st != MOEMU_OK) {
        cli_error();
        goto done;
    }
    double flops = device_flops(dev);
    int64_t ptok = wl_prompt_tokens(&wl), gtok = (int64_t)wl.batch * wl.decode;
    double wall = out.wall_prefill + out.wall_decode;
    cfg_figures_t fig;
    cfg_figures(&cfg, &fig);
    printf("model    %s: %.4g parameters (%.4g active per token), %s\n", cfg.name,
           (double)fig.total, (double)fig.active_per_token, emu_dtype_name(cfg.dtype));
    int min_len = wl.max_len;
    for (int b = 0; b < wl.batch; b++) min_len = wl.len[b] < min_len ? wl.len[b] : min_len;
    printf("workload batch %d, prompts of %d..%d tokens (%lld in all), %d generated per sequence\n",
           wl.batch, min_len, wl.max_len, (long long)ptok, wl.decode);
    printf("prefill  %lld tokens in %.3f s: %.1f tokens/s\n", (long long)ptok, out.wall_prefill,
           ptok / out.wall_prefill);
    if (wl.decode > 1)
        printf("decode   %lld tokens in %.3f s: %.1f tokens/s\n",
               (long long)wl.batch * (wl.decode - 1), out.wall_decode,
               wl.batch * (wl.decode - 1) / out.wall_decode);
    printf("total    %lld tokens in, %lld out, %.3f s, %.1f tokens/s, %.1f GFLOP/s achieved\n",
           (long long)ptok, (long long)gtok, wall, (ptok + gtok) / wall, flops / wall / 1e9);
    if (out.dropped)
        printf("routing  %lld of %lld expert assignments dropped by capacity factor %g\n",
               (long long)out.dropped, (long long)out.assignments, cfg.capacity_factor);
    summary = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:I, s:I}", "prompt_tokens",
                        (json_int_t)ptok, "generated_tokens", (json_int_t)gtok,
                        "wall_prefill_s", out.wall_prefill, "wall_decode_s", out.wall_decode,
                        "tokens_per_s", (ptok + gtok) / wall, "gflops_per_s",
                        flops / wall / 1e9, "assignments", (json_int_t)out.assignments,
                        "dropped", (json_int_t)out.dropped);
    if (o->dump_logits && dump_logits(o->dump_logits, &out, &wl, cfg.vocab_size) != MOEMU_OK) {
        cli_error();
        goto done;
    }
    if (o->json && write_json(o->json, &cfg, &wl, &out, summary) != MOEMU_OK) {
        cli_error();
        goto done;
    }
    rc = CLI_EXIT_OK;
done:
    json_decref(summary);
    model_out_free(&out);
    emu_dev_destroy(dev);
    wts_free(&w);
    wl_free(&wl);
    return rc;
}

int cli_run_main(int argc, char **argv)
{
    run_opts_t o;
    bool help = false;
    if (parse(&o, argc, argv, &help) != MOEMU_OK) return cli_error();
    if (help) {
        fputs(run_help, stdout);
        return CLI_EXIT_OK;
    }
    return run(&o);
}
