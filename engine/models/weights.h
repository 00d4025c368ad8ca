/* weights: the model's tensors on the host, generated from a seed or
 * loaded from safetensors with the family's Hugging Face names, and the
 * counter-based generator behind both the weights and seeded workloads.
 * They are fp32, but a generated fp16 or bf16 model (wts_packs) holds its
 * matrices packed in the dtype: half the bytes, the same values. */
#ifndef MOEMU_WEIGHTS_H
#define MOEMU_WEIGHTS_H

#include <stdint.h>

#include "engine/models/config.h"

/* Philox4x32-10 (Salmon et al., SC'11): word (index % 4) of the block at
 * counter (index / 4, stream), key seed. A pure function: any element is
 * computed without the others. */
uint32_t wts_philox(uint64_t seed, uint64_t stream, uint64_t index);
/* The block's four words at once: word i is wts_philox(seed, stream,
 * 4 * block + i). */
void wts_philox_block(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t block);
/* Several blocks at once: out[i] is wts_philox_block's of block[i]. */
#define WTS_PHILOX_LANES 8
void wts_philox_blocks(uint32_t out[WTS_PHILOX_LANES][4], uint64_t seed, uint64_t stream,
                       const uint64_t block[WTS_PHILOX_LANES]);
/* FNV-1a 64 of a name: the stream of a named tensor or sequence. */
uint64_t wts_stream(const char *name);

/* Element [offset, offset + n) of the generated tensor `name` whose rows
 * have fan_in elements: uniform in [-1, 1) times the tensor's scale (see
 * docs/weights.md), rounded to the emulated dtype. Bit-identical to the
 * same elements of the whole tensor. */
void wts_generate(float *out, uint64_t seed, const char *name, int64_t fan_in,
                  int64_t offset, int64_t n, emu_dtype_t dt);
/* The same values as their 16 bits in dt (fp16 or bf16: emu_dtype_pack_n). */
void wts_generate_packed(uint16_t *out, uint64_t seed, const char *name, int64_t fan_in,
                         int64_t offset, int64_t n, emu_dtype_t dt);
/* The kernel wts_generate runs, for tests and benches: WTS_GEN_SCALAR
 * (the reference: an element at a time), an emu_simd_t, or WTS_GEN_BEST
 * (the default, emu_simd_best). For the whole process; false, and nothing
 * changed, when the CPU lacks it. Every kernel gives the same bits. */
enum { WTS_GEN_SCALAR = -1, WTS_GEN_BEST = -2 };
bool wts_generate_kernel(int k);

/* One layer's tensors; NULL where the family or the layer has none. */
typedef struct {
    float *attn_norm;        /* (d) input_layernorm */
    float *wq, *wk, *wv, *wo;/* (H*hd, d), (Hkv*hd, d) x 2, (d, H*hd) */
    float *bq, *bk, *bv, *bo;/* biases (H*hd), (Hkv*hd) x 2, (d) */
    float *qn, *kn;          /* query/key norms: (hd) x 2 or (H*hd), (Hkv*hd) */
    float *q_a, *q_a_norm, *q_b, *kv_a, *kv_a_norm, *kv_b; /* MLA (layers.h) */
    float *moe_norm;         /* (d) post_attention_layernorm */
    float *gate;             /* (E, d); NULL in a dense layer */
    float *gate_bias;        /* (E) DeepSeek-V3's e_score_correction_bias */
    float **w1, **w3, **w2;  /* E each: (F, d), (F, d), (d, F) */
    float **sw1, **sw3, **sw2; /* num_shared_experts each, F_shared */
    float *sgate;            /* (1, d) the shared experts' sigmoid gate */
    float *sinks;            /* (H) gpt-oss's attention sinks */
    float *router_bias;      /* (E) gpt-oss's router bias (on the logits) */
    float **b13, **b2;       /* gpt-oss's expert biases, E each: (2F), (d) */
    float *dw1, *dw3, *dw2;  /* a dense layer's MLP: (Fd, d), (Fd, d), (d, Fd) */
} wts_layer_t;

/* What a named tensor is: one kind per name of wts_names_t, in its order. */
typedef enum {
    WTS_EMBED, WTS_FINAL_NORM, WTS_LM_HEAD,
    WTS_ATTN_NORM, WTS_Q, WTS_K, WTS_V, WTS_O, WTS_BQ, WTS_BK, WTS_BV, WTS_BO, WTS_QN, WTS_KN,
    WTS_MLP_NORM,
    WTS_Q_A, WTS_Q_A_NORM, WTS_Q_B, WTS_KV_A, WTS_KV_A_NORM, WTS_KV_B,
    WTS_ROUTER, WTS_GATE_BIAS,
    WTS_E1, WTS_E2, WTS_E3,
    WTS_FUSED_IN, WTS_FUSED_OUT,
    WTS_S1, WTS_S2, WTS_S3, WTS_SGATE,
    WTS_SINKS, WTS_ROUTER_BIAS,
    WTS_GATE_UP, WTS_GATE_UP_BIAS, WTS_DOWN, WTS_DOWN_BIAS,
    WTS_D1, WTS_D2, WTS_D3,
    WTS_KINDS
} wts_kind_t;

/* One tensor of the model by Hugging Face name, for loading, dumping and
 * generation; fan_in is the last dimension (gpt-oss's experts, stored
 * (in, out), take their in). */
typedef struct {
    char name[128];
    int ndim;
    int64_t shape[3];
    float *data;
    int64_t fan_in;
    bool fp8;   /* a linear layer's weight: FP8 e4m3 with block scales in a
                   model whose weights are FP8 (the embedding, lm_head,
                   norms, biases and routers stay in the dtype) */
    bool packed;/* held packed: data is an address that nothing maps, the
                   values at wts_packed_at (read them with wts_tensor_read) */
    wts_kind_t kind;
    int layer;  /* its layer, -1 for the embedding, final norm and lm_head */
    int expert; /* a routed or shared expert's index, else 0 */
} wts_tensor_t;

/* A part of a tensor seen as 2-D: rows [r0, r1) x columns [c0, c1), the
 * rows being the product of all but the last dimension (1 for a vector),
 * the columns the last dimension. Empty when r0 >= r1 or c0 >= c1; the
 * empty box is {0, 0, 0, 0}. */
typedef struct {
    int64_t r0, r1, c0, c1;
} wts_box_t;

/* Rows and columns of t's 2-D view. */
int64_t wts_tensor_rows(const wts_tensor_t *t);
int64_t wts_tensor_cols(const wts_tensor_t *t);
/* Elements of b, 0 when empty. */
int64_t wts_box_elems(const wts_box_t *b);
/* *acc becomes the bounding box of itself and b (b empty: unchanged). */
void wts_box_union(wts_box_t *acc, const wts_box_t *b);

/* A family's tensor names: printf formats given the layer and the expert
 * index (a format may use the first or none); NULL where the family has
 * no such tensor. */
typedef struct {
    const char *embed, *final_norm, *lm_head;
    const char *attn_norm, *q, *k, *v, *o, *bq, *bk, *bv, *bo, *qn, *kn, *mlp_norm;
    const char *q_a, *q_a_norm, *q_b, *kv_a, *kv_a_norm, *kv_b; /* MLA */
    const char *router, *gate_bias;     /* the router and its choice bias */
    const char *e1, *e2, *e3;           /* each routed expert's w1 (gate), w2 (down), w3 (up) */
    const char *fused_in, *fused_out;   /* or all experts in two tensors: (E, 2F, d)
                                           of [w1; w3], (E, d, F) of w2 (GraniteMoE) */
    const char *s1, *s2, *s3, *sgate;   /* shared experts and their gate */
    const char *sinks, *router_bias;    /* gpt-oss: attention sinks, router bias */
    const char *gate_up, *gate_up_bias, /* gpt-oss's experts: (E, d, 2F) gate/up */
        *down, *down_bias;              /* interleaved, (E, 2F); (E, F, d), (E, d) */
    const char *d1, *d2, *d3;           /* a dense layer's MLP */
} wts_names_t;

typedef struct {
    cfg_model_t cfg;
    float *embed;      /* (V, d) */
    float *final_norm; /* (d) */
    float *lm_head;    /* (V, d); equals embed when tied */
    wts_layer_t *layers;
    float *block;      /* one anonymous mapping holding every tensor not packed */
    int64_t n_floats;
    /* the packed tensors: their values, n_packed 16-bit ones in the dtype,
     * and the fp32 addresses they have (shadow, where nothing is mapped;
     * registered with layer_packed_add) */
    uint16_t *packed;
    float *shadow;
    int64_t n_packed, largest_packed;
    float **ptrs;      /* the per-expert pointer arrays */
    wts_tensor_t *list;/* every named tensor, in checkpoint order */
    int n_list;
    bool address_only; /* no block: the tensors' addresses are never backed
                          (a dry run's, wts_address_only) */
} wts_t;

/* Number of named tensors and the i-th, as the model's family names them. */
int wts_tensor_count(const wts_t *w);
void wts_tensor_at(const wts_t *w, int i, wts_tensor_t *out);

/* Allocate (after checking the host has the memory) and fill. */
moemu_status_t wts_generate_all(wts_t *w, const cfg_model_t *cfg, uint64_t seed);
/* The whole layout, of which only the boxes are generated: boxes[i] of
 * tensor i (indexed as w->list; wts_address_only gives the list), widened
 * as wts_box_generated says, bit for bit as wts_generate_all fills them.
 * Every other element is 0 and takes no host memory (the block is an
 * anonymous mapping whose untouched pages are never resident), and the
 * host-memory check counts only the boxes. NULL: every tensor, whole
 * (wts_generate_all). */
moemu_status_t wts_generate_boxes(wts_t *w, const cfg_model_t *cfg, uint64_t seed,
                                  const wts_box_t *boxes);
/* What generation fills of tensor i for box b: b, or for an FP8 tensor b
 * widened to whole blocks of the scales (each block's scale depends on
 * all its elements). */
void wts_box_generated(const wts_t *w, int i, const wts_box_t *b, wts_box_t *out);
/* Per tensor, the bounding box of what ranks[0..n) read in a forward pass
 * under s (valid for the model), by the family's reads; ranks NULL: ranks
 * 0 to n - 1. out has w->n_list boxes, indexed as w->list; w is any layout
 * of the model (wts_address_only's will do). */
void wts_boxes_for(const wts_t *w, const par_strategy_t *s, const int *ranks, int n,
                   wts_box_t *out);
/* Load a checkpoint as the Hub ships it (engine/models/checkpoint.h: a
 * safetensors file, a directory, or a model.safetensors.index.json and
 * its shards): exactly the family's tensors, by name, shape and a float
 * dtype (FP8 with its scales, MXFP4 blocks and scales: ckpt_read_all_opts),
 * all finite; every problem is named at once, MOEMU_ERR_FORMAT. */
moemu_status_t wts_load(wts_t *w, const cfg_model_t *cfg, const char *path);
/* wts_load reading only the rows of the boxes (indexed as w->list, as in
 * wts_generate_boxes; NULL: everything): a tensor whose box is empty is
 * checked (present, its shape, a dtype that can be read, its FP8 scales
 * or MXFP4 parts) but not read; of the others, the box's rows are read
 * whole (MXFP4 tensors: the whole matrices they fall in) and checked
 * finite. Every other element is 0, as in wts_generate_boxes. */
moemu_status_t wts_load_boxes(wts_t *w, const cfg_model_t *cfg, const char *path,
                              const wts_box_t *boxes);
/* Every tensor of w in fp32 in one block, as a loaded model holds them,
 * for callers that read the tensors' data directly: the same values; the
 * tensors move. MOEMU_ERR_NOMEM (w unchanged) when the host lacks the
 * memory. */
moemu_status_t wts_unpack(wts_t *w);
/* The layout without the values, for dry runs: tensors at addresses that
 * nothing maps, never to be read or written, so that the weights take no
 * host memory and no address space. */
moemu_status_t wts_address_only(wts_t *w, const cfg_model_t *cfg);
/* Write every tensor in the emulated dtype (fp32 as F32): one file, or
 * with shard_bytes > 0 shards of at most that many bytes and their index,
 * as save_pretrained names them (ckpt_write). */
moemu_status_t wts_dump(const wts_t *w, const char *path, int64_t shard_bytes);
void wts_free(wts_t *w);

/* Whether a model of cfg packs its matrices: fp16 or bf16, without FP8
 * or MXFP4 weights. Generated, it packs them all; loaded, those its
 * checkpoint stores in the dtype (the others, F32 ones for instance, may
 * hold values the dtype cannot: they stay fp32). */
bool wts_packs(const cfg_model_t *cfg);
/* The layout (wts_address_only's) as a model of cfg generated
 * (checkpoint NULL) or loaded from checkpoint holds it: which tensors are
 * packed, n_floats, n_packed, largest_packed. */
moemu_status_t wts_layout_of(wts_t *w, const cfg_model_t *cfg, const char *checkpoint);
/* Host bytes of the buffers that widen packed weights for the products
 * (layer_packed_add: a host core's each, of the largest matrix), the
 * model generated (checkpoint NULL) or loaded. */
double wts_widen_bytes(const cfg_model_t *cfg, const char *checkpoint);
/* Where the values of a packed tensor's address p lie. */
const uint16_t *wts_packed_at(const wts_t *w, const float *p);
/* Elements [off, off + n) of t, packed or not, as fp32 into out. */
void wts_tensor_read(const wts_t *w, const wts_tensor_t *t, int64_t off, int64_t n, float *out);
/* Host bytes the weights need, generated (checkpoint NULL) or loaded
 * (packed as wts_layout_of says, with loading's staging buffer); and a
 * check of bytes against the host's memory and address space
 * (emu_need_check) that names both figures and the limit. */
double wts_host_bytes(const cfg_model_t *cfg, const char *checkpoint);
moemu_status_t wts_check_host_memory(double bytes, const char *what);

#endif
