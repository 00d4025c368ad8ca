/* workload: the batch of prompts a run processes, and how many tokens it
 * generates. */
#ifndef MOEMU_WORKLOAD_H
#define MOEMU_WORKLOAD_H

#include <stdint.h>

#include "engine/models/config.h"

typedef struct {
    int batch;         /* sequences; 0: taken from lens or the tokens file */
    int prompt_len;    /* every prompt's length (default 128) */
    const char *lens;  /* one length per sequence, "a,b,..." */
    const char *range; /* lengths drawn from "MIN:MAX" (seeded) */
    const char *tokens_file; /* the prompts: a JSON list of lists of ids */
    int decode;        /* tokens generated per sequence */
    uint64_t seed;     /* for lengths and tokens */
} wl_opts_t;

typedef struct {
    int batch;
    int *len;        /* (batch) prompt lengths */
    int64_t *start;  /* (batch + 1) offsets of each prompt in tokens */
    int *tokens;     /* (start[batch]) prompt ids, sequence after sequence */
    int max_len;
    int decode;
} wl_t;

/* Build the workload; every bad value is MOEMU_ERR_INVALID naming the
 * field ("prompt lengths '4,x'", "tokens file t.json", "decode -1") and
 * the numbers (lengths past max_position_embeddings included). Give at
 * most one of prompt_len, lens, range and tokens_file. */
moemu_status_t wl_make(wl_t *wl, const wl_opts_t *o, const cfg_model_t *cfg);
void wl_free(wl_t *wl);
int64_t wl_prompt_tokens(const wl_t *wl);

#endif
