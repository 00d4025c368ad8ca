/* routing: where a dry run (--math skip) takes the router's decisions
 * from: drawn from a seeded distribution, or replayed from a record of a
 * real run, so that a dry run costs exactly what the real one did. */
#ifndef MOEMU_ROUTING_H
#define MOEMU_ROUTING_H

#include "engine/run/workload.h"

typedef enum { ROUTE_UNIFORM = 0, ROUTE_ZIPF, ROUTE_REPLAY } route_kind_t;

typedef struct route_memo route_memo_t;

typedef struct {
    route_kind_t kind;
    double zipf_s;     /* skew of ROUTE_ZIPF */
    uint64_t seed, stream; /* stream: the draws' ("routing"), hashed once */
    int L, B, P, k, E; /* shape of the record: layers, batch, positions, k */
    int *replay;       /* (L, B, P, k), -1 - expert for a dropped choice */
    double *cdf;       /* ROUTE_ZIPF: (E) cumulative popularity by rank */
    int *perm;         /* ROUTE_ZIPF: (L, E) expert of each popularity rank */
    bool borrowed;     /* replay points at the caller's record */
    /* the last draws of route_choose_rows, for the devices that route the
     * same rows (TP ranks with the tokens replicated); NULL for replay */
    route_memo_t *memo;
} route_src_t;

/* "uniform", "zipf:S" (S >= 0) or "replay:FILE" (a route_save record of
 * the same model and workload). Errors name the spec ("routing 'x'") and
 * the numbers. */
moemu_status_t route_open(route_src_t *r, const char *spec, const cfg_model_t *cfg,
                          const wl_t *wl, uint64_t seed);
void route_close(route_src_t *r);
/* Replay a record held in memory (not copied: it must outlive r). */
void route_replay_record(route_src_t *r, int *record, const cfg_model_t *cfg, const wl_t *wl);
/* A record of shape (L, B, P, k) for cfg and wl, every entry INT32_MIN
 * ("no token here") until a run fills it; NULL when out of memory. */
int *route_record_new(const cfg_model_t *cfg, const wl_t *wl, size_t *count);

/* The k distinct experts token (b, pos) chooses in layer l, in the
 * router's order. uniform: each expert alike; zipf:S: the expert of
 * popularity rank i (a seeded permutation per layer) with weight
 * 1/(i+1)^S; both draw without replacement from a counter-based stream of
 * (seed, layer, b, pos). */
void route_choose(const route_src_t *r, int layer, int b, int pos, int *idx);
/* route_choose for n tokens (seq[i], pos[i]), their choices at idx + i * k:
 * the same decisions, drawn several tokens at a time; a call with the
 * same rows as one of the last few copies their draws. Thread-safe. */
void route_choose_rows(const route_src_t *r, int layer, const int *seq, const int *pos, int n,
                       int *idx);

/* A record from model_opts_t.route / dist (shape (L, B, P, k)) as a
 * safetensors file with one I32 tensor "routing". */
moemu_status_t route_save(const char *path, const int *route, int L, int B, int P, int k);

#endif
