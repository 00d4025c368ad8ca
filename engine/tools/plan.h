/* plan: a deployment plan (model, hardware, strategy, workload, claimed
 * figures) checked claim by claim against moemu's arithmetic, a dry run of
 * the full workload and a real-math check of a reduced one.
 * docs/plans.md describes the file format and the verdicts. */
#ifndef MOEMU_PLAN_H
#define MOEMU_PLAN_H

#include <jansson.h>
#include <stdio.h>

#include "engine/tools/check.h"
#include "engine/tools/report.h"

/* What a claim is compared with: a figure of moemu's (docs/plans.md). */
typedef enum {
    CLAIM_TOTAL_PARAMETERS = 0,
    CLAIM_ACTIVE_PARAMETERS,
    CLAIM_DEVICES,
    CLAIM_MEMORY_PER_DEVICE_GB,  /* peak of a device's memory */
    CLAIM_MEMORY_FRACTION,       /* the same over the capacity */
    CLAIM_TTFT_S,                /* time to first token of the batch */
    CLAIM_TPOT_S,                /* time per output token */
    CLAIM_E2E_S,                 /* end-to-end latency */
    CLAIM_THROUGHPUT_PER_DEVICE, /* all tokens per ms per device */
    CLAIM_THROUGHPUT_TOKENS_S,   /* all tokens per second */
    CLAIM_COMMUNICATION_SHARE,   /* communication / end to end */
    CLAIM_LOAD_BALANCE,          /* tokens per expert: max / mean */
    CLAIM__COUNT
} plan_metric_t;

typedef enum { CLAIM_ABOUT = 0, CLAIM_AT_MOST, CLAIM_AT_LEAST } plan_bound_t;

typedef struct {
    char what[160];     /* the author's words */
    plan_metric_t metric;
    plan_bound_t bound;
    double value;
    char note[256];     /* how the claim was read */
} plan_claim_t;

typedef struct {
    char path[512], name[128], description[512];
    cfg_model_t cfg;
    emu_hw_t hw;
    char strategy[256];   /* as stated */
    char pp_layers[128];
    int devices;          /* as stated; 0 when not stated */
    int micro_batches;
    wl_opts_t wl;
    char lens[1024], range[64]; /* storage for wl */
    plan_claim_t *claims;
    int nclaims;
    json_t *assumptions;  /* array of strings */
    double tolerance;     /* a claim holds within a factor 1 + tolerance */
} plan_t;

/* Read and check a plan file; errors name the file and the key. */
moemu_status_t plan_load(plan_t *p, const char *path);
void plan_free(plan_t *p);

typedef struct {
    bool no_check;      /* skip the real-math check */
    const char *routing; /* dry run's router (default uniform) */
    FILE *out;          /* the readable verdicts */
    void (*progress)(void *, const char *, int, int, int, int);
} plan_opts_t;

/* Evaluate every claim; *result receives everything as JSON (the caller
 * decrefs it). *all_hold tells whether every claim held. */
moemu_status_t plan_evaluate(const plan_t *p, const plan_opts_t *o, json_t **result,
                             bool *all_hold);

#endif
