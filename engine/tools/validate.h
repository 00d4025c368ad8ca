/* validate: moemu's virtual figures against published measurements. A
 * CSV of measured runs (model, card, strategy, a fixed batch and lengths,
 * one figure each, with its source) is read, each run is repeated as a dry
 * run, and every row gets moemu's figure and the ratio moemu / published;
 * a summary gives the median error and the worst ratios, over all rows,
 * per use (fit or holdout), per source and per card. docs/validation.md
 * is its table; the CSV format is described there. */
#ifndef MOEMU_VALIDATE_H
#define MOEMU_VALIDATE_H

#include <jansson.h>
#include <stdio.h>

#include "emu/emu.h"

typedef enum {
    VAL_LATENCY_S = 0,    /* end to end of the batch, seconds */
    VAL_TTFT_MS,          /* time to first token of the batch */
    VAL_TPOT_MS,          /* time per output token after the first */
    VAL_OUT_TOKENS_PER_S, /* output tokens of the batch / end to end */
    VAL_OUT_TOKENS_PER_S_PER_GPU, /* the same over the devices */
    VAL__COUNT
} val_metric_t;

const char *val_metric_name(val_metric_t m); /* "latency_s", ... */

/* One measurement and moemu's figure for it. */
typedef struct {
    int line;               /* in the CSV, from 1 (the header) */
    char id[64], use[16], source[256], engine[32], model[128], hw[64], dtype[16],
        strategy[128], note[1024];
    int batch, prompt_len, decode;
    val_metric_t metric;
    double published;
    /* after val_run */
    bool no_fit;            /* ran only without the devices' memory limit */
    bool profiled;          /* ran with its engine's figures for its card */
    double moemu, ratio;    /* moemu's figure; moemu / published */
} val_row_t;

typedef struct {
    val_row_t *rows;
    int n;
    char path[512];   /* the CSV */
    char models[512]; /* val_run's models directory ("" when none) */
} val_set_t;

/* Read a measurements CSV (header: id,use,source,engine,model,hw,dtype,
 * strategy,batch,prompt_len,decode,metric,value,note, any order, more
 * columns refused by name). Every bad row and field is reported at once,
 * MOEMU_ERR_INVALID naming the line and the field; MOEMU_ERR_IO when the
 * file cannot be read, MOEMU_ERR_FORMAT when it is not CSV. */
moemu_status_t val_load(val_set_t *s, const char *path);
void val_free(val_set_t *s);

typedef struct {
    const char *models;  /* directory of NAME.json configs for rows whose
                            model is not a built-in name */
    const char *routing; /* the dry runs' router; NULL: uniform */
    const emu_hw_t *hw;  /* not NULL: every row runs on it, not its preset */
    bool presets_only;   /* the cards' presets alone, without the rows'
                            engine profiles */
    uint64_t seed;
    void (*progress)(void *arg, int done, int total);
    void *progress_arg;
} val_opts_t;

/* Every row as a dry run of its model, card, strategy and workload: its
 * figure and ratio. The card is its preset with, when a built-in engine
 * profile of the row's engine has figures for the card, those over it.
 * A row of dtype fp8 runs with the weights, products and KV cache in FP8
 * (on a card with FP8 Tensor Cores). A run that does not fit the devices'
 * memory is run again without the limit and marked no_fit. Models,
 * cards and strategies are checked first, every problem at once. */
moemu_status_t val_run(val_set_t *s, const val_opts_t *o);

/* The summary of the rows that ran among those matching (NULL: any). */
typedef struct {
    int rows;
    double median_err;  /* median of |ratio - 1| */
    double low, high;   /* the smallest and largest ratio */
    double worst;       /* max(high, 1 / low): the worst factor */
} val_summary_t;

void val_summarize(const val_set_t *s, const char *use, const char *source, const char *hw,
                   val_summary_t *out);

/* The whole result: {"summary": {...}, "rows": [...]}. */
json_t *val_json(const val_set_t *s);
/* The result as a Markdown page (docs/validation.md), written to f. */
moemu_status_t val_markdown(FILE *f, const void *set);
/* Print the table and the summaries to f. */
void val_print(const val_set_t *s, FILE *f);

/* Compare with a baseline (a file val_json wrote): *worse tells whether
 * the median error or the worst factor grew, what grew printed to f. A
 * baseline of other rows (ids) is MOEMU_ERR_INVALID naming them. */
moemu_status_t val_against(const val_set_t *s, const char *baseline, FILE *f, bool *worse);

#endif
