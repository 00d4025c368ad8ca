/* checkpoint: a model's weights as the Hugging Face Hub ships them, one
 * model.safetensors or shards model-00001-of-00003.safetensors, ... named
 * by model.safetensors.index.json:
 *   {"metadata": {"total_size": N}, "weight_map": {"tensor": "shard", ...}}
 * Every file is read with st_open (validated whole, read with pread). The
 * reader is strict: an index and its shards must agree exactly, because a
 * half-downloaded or mixed-up checkpoint would otherwise load as a
 * different model. Internal to moemu (not installed). */
#ifndef MOEMU_CHECKPOINT_H
#define MOEMU_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "emu/emu.h"
#include "engine/models/safetensors.h"

#define CKPT_SINGLE_NAME "model.safetensors"
#define CKPT_INDEX_NAME "model.safetensors.index.json"

typedef struct ckpt ckpt_t;

/* Open path, which is
 *   a) one .safetensors file (any name),
 *   b) a directory holding model.safetensors or model.safetensors.index.json
 *      (both: refused as ambiguous, one of them is stale; other files, such
 *      as config.json or Mistral's consolidated.safetensors, are ignored),
 *   c) an index file itself (a name ending in .json).
 * The index's shard names are files in its own directory (no '/').
 * Refused, all problems in one message (moemu_problems_t, one a line),
 * each naming the files, the tensors and the numbers: an index naming a
 * file that is not there, a shard that is not a valid safetensors file, a
 * tensor in two shards, a tensor of the weight_map missing from the shard
 * it names, a tensor of a shard that the weight_map does not list (or puts
 * in another shard), metadata.total_size (when present; other metadata is
 * ignored) differing from the tensors' bytes. MOEMU_ERR_FORMAT, or
 * MOEMU_ERR_IO when a file exists but cannot be read. Nothing is written.
 * On success *out is the caller's, for ckpt_close; its tensors point into
 * the mappings and live until then. */
moemu_status_t ckpt_open(const char *path, ckpt_t **out);
void ckpt_close(ckpt_t *ck);

/* The tensors, shard by shard in file-name order, each in its file's
 * header order; i from 0 to ckpt_count - 1 (else NULL). */
int ckpt_count(const ckpt_t *ck);
const st_tensor_t *ckpt_at(const ckpt_t *ck, int i);
/* The file name (no directory) of the shard holding tensor i. */
const char *ckpt_file_of(const ckpt_t *ck, int i);
/* The index (ckpt_at's) of the tensor called name, or -1. */
int ckpt_index(const ckpt_t *ck, const char *name);
/* The path ckpt_open was given. */
const char *ckpt_path(const ckpt_t *ck);

/* One tensor a model reads: name, shape[0..ndim) (ndim up to
 * ST_MAX_DIMS; experts stacked as [E, rows, cols] are 3-D) and where its
 * fp32 values go (the product of the shape, the caller's). */
typedef struct {
    const char *name;
    int ndim;
    const int64_t *shape;
    float *out;
} ckpt_want_t;

/* Rows [r0, r1) of a tensor seen as 2-D: rows of its last dimension. */
typedef struct {
    int64_t r0, r1;
} ckpt_rows_t;

/* Read want[0..n) as fp32 (F32, F16 and BF16 converted as st_read_f32
 * does; F8_E4M3 dequantized with its block scales, and MXFP4 blocks and
 * scales decoded, see ckpt_read_opts_t). The checkpoint must be exactly
 * the model: every wanted tensor present with that shape and a float
 * dtype (or as MXFP4), every tensor of the checkpoint wanted (or a wanted
 * FP8 tensor's scales, a wanted MXFP4 tensor's blocks and scales), no
 * NaN or Inf. Otherwise
 * MOEMU_ERR_FORMAT with every problem at once, one a line, headed by
 * label (the model's name):
 * missing tensors (a few named, "and N more"), unexpected ones, wrong
 * shapes ("in model-00002-of-00003.safetensors: model.layers.3.mlp.gate
 * .weight has shape [60, 2048], expected [64, 2048]"), wrong dtypes,
 * non-finite values with their counts. A name wanted twice, or a bad
 * argument: MOEMU_ERR_INVALID. After an error the outs hold unspecified
 * values. */
moemu_status_t ckpt_read_all(const ckpt_t *ck, const ckpt_want_t *want, int n,
                             const char *label);

/* FP8 checkpoints as DeepSeek-V3 ships them (config.json's
 * quantization_config {"quant_method": "fp8", "fmt": "e4m3",
 * "weight_block_size": [128, 128]}): a wanted tensor stored as F8_E4M3,
 * of shape [..., R, C], has a companion named as it with "_scale_inv"
 * appended ("....down_proj.weight_scale_inv"), F32 (BF16 and F16 also
 * taken) of shape [..., ceil(R/block_r), ceil(C/block_c)], and its value
 * is fp8 * scale_inv of its block, one fp32 product (DeepSeek's
 * inference/kernel.py weight_dequant: y = x * s; "inv" because the
 * quantizer divided by it). The scales count as read. Problems, reported
 * with the others: an FP8 tensor without its scales, or of fewer than 2
 * dimensions; scales of the wrong shape or dtype; a "_scale_inv" tensor
 * whose wanted tensor is not FP8 (one whose tensor is not wanted is
 * unexpected, as that tensor is); NaN or Inf after dequantizing.
 *
 * MXFP4 checkpoints as gpt-oss ships its experts (config.json's
 * quantization_config {"quant_method": "mxfp4"}): a wanted tensor X of
 * shape [..., in, out] that the checkpoint lacks may be stored as
 * X_blocks, U8 [..., out, in / 32, 16], and X_scales, U8 [..., out,
 * in / 32] ("....experts.gate_up_proj_blocks"). Byte k of a block packs
 * values 2k (its low nibble) and 2k + 1 (its high one) as e2m1 codes
 * (+-0, 0.5, 1, 1.5, 2, 3, 4, 6, the sign in bit 3), each 32 of a row
 * times 2^(scale - 127), exact in fp32, and each matrix transposed from
 * [out, in] to [in, out]: transformers' convert_moe_packed_tensors
 * (integrations/mxfp4.py). Both count as read. Problems, reported with
 * the others: blocks without scales or scales without blocks, a wanted
 * shape of fewer than 2 dimensions or whose in is not a multiple of 32,
 * blocks or scales of the wrong shape or not U8, NaN or Inf after
 * decoding (large scales overflow; named by the
 * blocks). A checkpoint may store some tensors so and others plainly.
 *
 * ignore, when set, is asked about each tensor of the checkpoint that no
 * want names (and no FP8 want uses as its scales): true leaves it out of
 * the "does not have" problem, counted in ignored and ignored_bytes (its
 * stored bytes). Wanted tensors are read whatever it says. DeepSeek-V3's
 * multi-token-prediction layer (model.layers.61.*) is the case in mind. */
typedef struct {
    bool (*ignore)(const char *name, void *arg);
    void *arg;
    int block_r, block_c; /* the FP8 scale blocks; 0 for 128 */
    /* NULL, or per want the rows to read (into their places in out, the
     * rest untouched; an MXFP4 tensor reads the whole matrices they fall
     * in), the only ones checked finite; r0 == r1: the tensor is checked
     * (present, shape, dtype, its scales or MXFP4 parts) but not read */
    const ckpt_rows_t *rows;
    /* NULL, or called with want w's index once its values are in its out
     * (and checked), before the next want is read: wants may share one
     * out that read moves elsewhere */
    void (*read)(int w, void *arg);
    void *read_arg;
    /* out */
    int ignored;            /* tensors left out by ignore */
    int64_t ignored_bytes;  /* their stored bytes */
    int fp8;                /* wanted tensors dequantized from F8_E4M3 */
    int mxfp4;              /* wanted tensors decoded from MXFP4 */
} ckpt_read_opts_t;

/* ckpt_read_all with o (NULL: ckpt_read_all itself); a block size below
 * 0 is MOEMU_ERR_INVALID. The out fields are set whatever the result. */
moemu_status_t ckpt_read_all_opts(const ckpt_t *ck, const ckpt_want_t *want, int n,
                                  const char *label, ckpt_read_opts_t *o);

/* Write ts[0..n) stored as dt (as st_write) in the Hub's layout:
 * - with shard_bytes <= 0, one file: path itself (an existing file there
 *   is replaced, atomically), or path/model.safetensors when path is an
 *   existing directory;
 * - with shard_bytes > 0, a directory at path (unless path ends in
 *   ".safetensors" and everything fits: that file): everything in
 *   path/model.safetensors when all tensors' bytes fit in shard_bytes;
 * - else path/model-0000K-of-0000N.safetensors, split in tensor order with
 *   at most shard_bytes of tensor data each (a tensor larger than
 *   shard_bytes alone in its file), and path/model.safetensors.index.json
 *   (metadata.total_size and weight_map, keys sorted, as save_pretrained
 *   writes it). A path ending in ".safetensors" that needs shards is
 *   refused (MOEMU_ERR_INVALID): it names a file, not a directory.
 * A directory path is created when absent (its parent must exist). An
 * existing one may hold other files (config.json, the tokenizer), but not
 * a checkpoint already: model.safetensors, the index or any
 * model-*-of-*.safetensors there is refused (MOEMU_ERR_INVALID naming
 * it), since replacing a set of shards file by file could leave a mix of
 * the old and the new; remove the old checkpoint first.
 * The set appears complete or not at all: the files are written in a
 * temporary directory inside path, then renamed into place, shards first
 * and the index last; on failure everything written (and a directory this
 * call created) is removed. */
moemu_status_t ckpt_write(const char *path, const st_write_tensor_t *ts, int n, st_dtype_t dt,
                          int64_t shard_bytes);
/* The same with tensor i stored as dt[i] (F8_E4M3 weights beside their
 * F32 "_scale_inv" scales, as an FP8 checkpoint keeps them). */
moemu_status_t ckpt_write_dtypes(const char *path, const st_write_tensor_t *ts, int n,
                                 const st_dtype_t *dt, int64_t shard_bytes);

/* A size as save_pretrained's max_shard_size spells it: "5GB", "500MB",
 * "2GiB", "1000000" (bytes): a whole non-negative number, then maybe
 * spaces and a unit, B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB,
 * TiB (powers of 1024), in any case, except that B, KB, MB, GB and TB
 * ending in a lowercase b ("5Gb", "5gb") are refused: Hugging Face reads
 * those as bits, and a size silently divided by 8 is not what anyone
 * means. Errors (MOEMU_ERR_INVALID) name the string. */
moemu_status_t ckpt_parse_size(const char *s, int64_t *out);

#endif
