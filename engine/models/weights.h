/* weights: the model's tensors in fp32 on the host, generated from a seed
 * or loaded from safetensors with Hugging Face Mixtral names, and the
 * counter-based generator behind both the weights and seeded workloads. */
#ifndef MOEMU_WEIGHTS_H
#define MOEMU_WEIGHTS_H

#include <stdint.h>

#include "engine/models/config.h"

/* Philox4x32-10 (Salmon et al., SC'11): word (index % 4) of the block at
 * counter (index / 4, stream), key seed. A pure function: any element is
 * computed without the others. */
uint32_t wts_philox(uint64_t seed, uint64_t stream, uint64_t index);
/* FNV-1a 64 of a name: the stream of a named tensor or sequence. */
uint64_t wts_stream(const char *name);

/* Element [offset, offset + n) of the generated tensor `name` whose rows
 * have fan_in elements: uniform in [-1, 1) times the tensor's scale (see
 * docs/weights.md), rounded to the emulated dtype. Bit-identical to the
 * same elements of the whole tensor. */
void wts_generate(float *out, uint64_t seed, const char *name, int64_t fan_in,
                  int64_t offset, int64_t n, emu_dtype_t dt);

typedef struct {
    float *attn_norm;        /* (d) input_layernorm */
    float *wq, *wk, *wv, *wo;/* (H*hd, d), (Hkv*hd, d) x 2, (d, H*hd) */
    float *moe_norm;         /* (d) post_attention_layernorm */
    float *gate;             /* (E, d) */
    float **w1, **w3, **w2;  /* E each: (F, d), (F, d), (d, F) */
    float **sw1, **sw3, **sw2; /* num_shared_experts each, F_shared */
} wts_layer_t;

typedef struct {
    cfg_model_t cfg;
    float *embed;      /* (V, d) */
    float *final_norm; /* (d) */
    float *lm_head;    /* (V, d); equals embed when tied */
    wts_layer_t *layers;
    float *block;      /* one allocation holding every tensor */
    int64_t n_floats;
    float **ptrs;      /* the per-expert pointer arrays */
    bool mapped;       /* block is an untouched address range (dry runs) */
} wts_t;

/* One tensor of the model by Hugging Face name, for loading and dumping. */
typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];
    float *data;
    int64_t fan_in;
} wts_tensor_t;

/* Number of named tensors and the i-th, as the model's family names them
 * (its table's tensor entries). */
int wts_tensor_count(const wts_t *w);
void wts_tensor_at(const wts_t *w, int i, wts_tensor_t *out);
/* Mixtral's: Hugging Face names, lm_head absent when tied. */
int wts_mixtral_tensor_count(const wts_t *w);
void wts_mixtral_tensor_at(const wts_t *w, int i, wts_tensor_t *out);

/* Allocate (after checking the host has the memory) and fill. */
moemu_status_t wts_generate_all(wts_t *w, const cfg_model_t *cfg, uint64_t seed);
/* Load a safetensors checkpoint. A tensor with NaN or Inf values is
 * MOEMU_ERR_FORMAT naming each such tensor and its count. */
moemu_status_t wts_load(wts_t *w, const cfg_model_t *cfg, const char *path);
/* The layout without the values, for dry runs: an address range that is
 * never read or written, so it takes no host memory. */
moemu_status_t wts_address_only(wts_t *w, const cfg_model_t *cfg);
/* Write every tensor in the emulated dtype (fp32 as F32). */
moemu_status_t wts_dump(const wts_t *w, const char *path);
void wts_free(wts_t *w);

/* Host bytes the fp32 weights need, and a check against the host's
 * available memory that names both figures. */
double wts_host_bytes(const cfg_model_t *cfg);
moemu_status_t wts_check_host_memory(double bytes, const char *what);

#endif
