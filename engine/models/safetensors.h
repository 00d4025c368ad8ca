/* safetensors: read (with pread, into the caller's memory) and write files in the safetensors
 * format: an 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}, then the data. */
#ifndef MOEMU_SAFETENSORS_H
#define MOEMU_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "emu/emu.h"

#define ST_MAX_DIMS 8

typedef enum {
    ST_F32 = 0, ST_F16, ST_BF16, ST_I32, ST_I64, ST_F8_E4M3, ST_U8, ST_OTHER
} st_dtype_t;

/* Bytes per element of a dtype moemu knows (0 for ST_OTHER). */
size_t st_dtype_size(st_dtype_t dt);

/* F8_E4M3 is float8_e4m3fn, converted by emu_e4m3_to_f32 and
 * emu_f32_to_e4m3 (emu/emu.h). U8 is raw bytes (MXFP4's packed e2m1
 * pairs and e8m0 exponents), read by st_read_u8. */

typedef struct {
    const char *name;
    st_dtype_t dtype;
    char dtype_name[16];      /* as written in the file */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t offset;          /* of its data in the file */
    size_t nbytes;
} st_tensor_t;

typedef struct st_file st_file_t;

/* Open and validate a whole file as the reference reader
 * (huggingface/safetensors) does: header length within the file and at
 * most 100 MB, JSON well-formed, every tensor's offsets consistent with
 * its dtype and shape, and the tensors, sorted by offset, covering the
 * data exactly (from 0, no overlap, no gap, nothing after). A bad file
 * is MOEMU_ERR_FORMAT (MOEMU_ERR_IO if it cannot be opened) with a
 * message naming the file and the problem. */
moemu_status_t st_open(const char *path, st_file_t **out);
void st_close(st_file_t *f);
int st_count(const st_file_t *f);
const st_tensor_t *st_at(const st_file_t *f, int i);
const st_tensor_t *st_find(const st_file_t *f, const char *name); /* or NULL */
/* The header-order index of name (st_at's), or -1. */
int st_index(const st_file_t *f, const char *name);

/* Look up name, check its shape equals shape[0..ndim) and convert it to
 * fp32 into out (the product of shape elements). F32, F16, BF16 and
 * F8_E4M3 are accepted; F8_E4M3 gives the stored values, without the
 * block scales a checkpoint keeps beside them (ckpt_read_all applies
 * those). Missing tensor, wrong shape or unsupported dtype: an error
 * naming the tensor and the numbers. */
moemu_status_t st_read_f32(const st_file_t *f, const char *name, int ndim,
                           const int64_t *shape, float *out);
/* The same for elements [first, first + n) of the tensor only (row-major),
 * into out[0..n). */
moemu_status_t st_read_f32_part(const st_file_t *f, const char *name, int ndim,
                                const int64_t *shape, int64_t first, int64_t n, float *out);

/* The bytes of tensor t of f as the file holds them (t->nbytes) into out.
 * Reads of every kind go to the file (kept open) and never map it: a file
 * that shrinks while it is read (cp over it) is MOEMU_ERR_IO naming it and
 * both sizes, never a SIGBUS. Safe from several threads at once. */
moemu_status_t st_read_bytes(const st_file_t *f, const st_tensor_t *t, void *out);

/* The same for an I32 tensor, read as it is. */
moemu_status_t st_read_i32(const st_file_t *f, const char *name, int ndim,
                           const int64_t *shape, int32_t *out);

/* The same for a U8 tensor, its bytes as they are. */
moemu_status_t st_read_u8(const st_file_t *f, const char *name, int ndim,
                          const int64_t *shape, uint8_t *out);
/* The same for bytes [first, first + n) of the tensor only, into out[0..n). */
moemu_status_t st_read_u8_part(const st_file_t *f, const char *name, int ndim,
                               const int64_t *shape, int64_t first, int64_t n, uint8_t *out);

/* "[32000, 512]" into buf, which it returns (256 bytes is enough for
 * ST_MAX_DIMS dimensions): the one spelling of a shape in messages. */
const char *st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* Writing: tensors are given as fp32 and stored as dtype (ST_F32, ST_F16,
 * ST_BF16 or ST_F8_E4M3, rounded to nearest even), or, with ST_I32, data
 * points to int32 values and, with ST_U8, to uint8_t bytes, stored as
 * they are. The file appears complete or not at
 * all: data goes to a temporary file beside path that is renamed at the
 * end. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data;
} st_write_tensor_t;

moemu_status_t st_write(const char *path, const st_write_tensor_t *tensors,
                        int n, st_dtype_t dtype);
/* The same with tensor i stored as dtypes[i], as an FP8 checkpoint keeps
 * F8_E4M3 weights beside their F32 scales in one file. */
moemu_status_t st_write_dtypes(const char *path, const st_write_tensor_t *tensors,
                               int n, const st_dtype_t *dtypes);

#endif
