/* safetensors: round trips in each stored dtype, the exact file layout,
 * hand-made files (unaligned data, padded headers, other dtypes), every
 * malformed-file case with the facts its message must give, and the
 * all-or-nothing behaviour of st_write. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/models/safetensors.h"
#include "engine/models/weights.h"

#define TMPDIR_NAME "moemu-st"
#include "tests/tmpdir.h"

TestSuite(st, .init = tmpdir_setup, .fini = tmpdir_teardown);

static long file_size(const char *path)
{
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0, "stat %s", path);
    return (long)sb.st_size;
}

/* An 8-byte little-endian length hlen, then hbytes of header, then data. */
static void write_raw(const char *path, uint64_t hlen, const char *header,
                      size_t hbytes, const void *data, size_t ndata)
{
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp, "fopen %s", path);
    uint8_t lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)(hlen >> (8 * i));
    cr_assert_eq(fwrite(lb, 1, 8, fp), 8);
    if (hbytes) cr_assert_eq(fwrite(header, 1, hbytes, fp), hbytes);
    if (ndata) cr_assert_eq(fwrite(data, 1, ndata, fp), ndata);
    cr_assert_eq(fclose(fp), 0);
}

/* A well-framed file with this header and ndata zero bytes of data. */
static const char *write_header(const char *name, const char *header,
                                size_t ndata)
{
    const char *path = tpath(name);
    void *zeros = calloc(1, ndata + 1);
    write_raw(path, strlen(header), header, strlen(header), zeros, ndata);
    free(zeros);
    return path;
}

static void expect_msg(const char *sub)
{
    cr_expect_not_null(strstr(moemu_errmsg(), sub),
                       "message \"%s\" should contain \"%s\"", moemu_errmsg(),
                       sub);
}

/* st_open must fail with st, leave *out NULL and name the file and each of
 * subs (NULL-terminated). */
static void expect_open_fails(const char *path, moemu_status_t want,
                              const char *const *subs)
{
    st_file_t *f = (st_file_t *)&f; /* must be reset to NULL */
    moemu_errclear();
    moemu_status_t st = st_open(path, &f);
    cr_assert_eq(st, want, "st_open(%s) gave %d (%s), want %d", path, st,
                 moemu_errmsg(), want);
    cr_expect_null(f);
    expect_msg(path);
    for (; subs && *subs; subs++) expect_msg(*subs);
    cr_expect_null(strchr(moemu_errmsg(), '\n'), "one line");
}

#define SUBS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Deterministic values in [-8, 8) with specials mixed in, rounded to what
 * dt can hold so that they must round-trip exactly. */
static void fill(float *x, size_t n, uint32_t seed, emu_dtype_t dt)
{
    static const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f,
                                     0x1p-24f, -0x1p-14f, 1e30f, 3.0e-39f};
    uint32_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        float v = ((float)(s >> 8) / 16777216.0f - 0.5f) * 16.0f;
        if (i % 7 == 3) v = specials[(i / 7) % (sizeof specials / 4)];
        /* f16 cannot hold 1e30 or bf16's tiny normals: leave them to the
         * rounding test */
        if (dt == EMU_DTYPE_FP16 && (v == 1e30f || v == 3.0e-39f)) v = 0.5f;
        x[i] = emu_dtype_round(dt, v);
    }
}

/* ---- round trips */

static void roundtrip(st_dtype_t sdt, emu_dtype_t edt, const char *dtname,
                      size_t esz)
{
    enum { NT = 4 };
    static const char *names[NT] = {"model.embed_tokens.weight", "b",
                                    "scalar", "c"};
    const int ndims[NT] = {2, 1, 0, 3};
    const int64_t shapes[NT][3] = {{7, 5}, {3}, {0}, {2, 3, 4}};
    const size_t counts[NT] = {35, 3, 1, 24};
    float *vals[NT];
    st_write_tensor_t wt[NT];
    for (int i = 0; i < NT; i++) {
        vals[i] = malloc(counts[i] * sizeof(float));
        fill(vals[i], counts[i], (uint32_t)i, edt);
        wt[i] = (st_write_tensor_t){.name = names[i], .ndim = ndims[i],
                                    .data = vals[i]};
        memcpy(wt[i].shape, shapes[i], sizeof shapes[i]);
    }
    const char *path = tpath("rt.safetensors");
    cr_assert_eq(st_write(path, wt, NT, sdt), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(dir_entries(g_dir), 1, "no temporary file left");

    st_file_t *f = NULL;
    cr_assert_eq(st_open(path, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(st_count(f), NT);
    for (int i = 0; i < NT; i++) {
        const st_tensor_t *t = st_at(f, i);
        cr_assert_not_null(t);
        cr_expect_str_eq(t->name, names[i], "order kept");
        cr_expect_eq(st_find(f, names[i]), t);
        cr_expect_eq(t->dtype, sdt);
        cr_expect_str_eq(t->dtype_name, dtname);
        cr_assert_eq(t->ndim, ndims[i]);
        for (int d = 0; d < ndims[i]; d++)
            cr_expect_eq(t->shape[d], shapes[i][d]);
        cr_expect_eq(t->nbytes, counts[i] * esz);

        float *got = malloc(counts[i] * sizeof(float));
        cr_assert_eq(st_read_f32(f, names[i], ndims[i], shapes[i], got),
                     MOEMU_OK, "%s", moemu_errmsg());
        for (size_t k = 0; k < counts[i]; k++)
            cr_expect_eq(memcmp(&got[k], &vals[i][k], 4), 0,
                         "%s[%zu]: got %a want %a", names[i], k, got[k],
                         vals[i][k]);
        free(got);
    }
    cr_expect_null(st_at(f, NT));
    cr_expect_null(st_at(f, -1));
    cr_expect_null(st_find(f, "absent"));
    st_close(f);
    for (int i = 0; i < NT; i++) free(vals[i]);
}

Test(st, roundtrip_f32) { roundtrip(ST_F32, EMU_DTYPE_FP32, "F32", 4); }
Test(st, roundtrip_f16) { roundtrip(ST_F16, EMU_DTYPE_FP16, "F16", 2); }
Test(st, roundtrip_bf16) { roundtrip(ST_BF16, EMU_DTYPE_BF16, "BF16", 2); }

/* Arbitrary fp32 values come back rounded to nearest even, across several
 * conversion chunks. */
Test(st, stored_values_round_like_emu)
{
    const size_t n = 100003;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    fill(x, n, 42, EMU_DTYPE_FP32);
    x[5] = 1e30f;   /* f16: inf */
    x[6] = 1e-30f;  /* f16: 0 */
    x[9] = 1.0f + 0x1p-11f; /* f16 tie: to even, 1.0 */
    static const struct {
        st_dtype_t sdt;
        emu_dtype_t edt;
    } cases[] = {{ST_F16, EMU_DTYPE_FP16}, {ST_BF16, EMU_DTYPE_BF16}};
    for (size_t c = 0; c < 2; c++) {
        st_write_tensor_t wt = {.name = "w", .ndim = 1, .shape = {(int64_t)n},
                                .data = x};
        const char *path = tpath("round.safetensors");
        cr_assert_eq(st_write(path, &wt, 1, cases[c].sdt), MOEMU_OK);
        st_file_t *f;
        cr_assert_eq(st_open(path, &f), MOEMU_OK, "%s", moemu_errmsg());
        int64_t shape = (int64_t)n;
        cr_assert_eq(st_read_f32(f, "w", 1, &shape, y), MOEMU_OK);
        for (size_t i = 0; i < n; i++) {
            float want = emu_dtype_round(cases[c].edt, x[i]);
            cr_assert_eq(memcmp(&y[i], &want, 4), 0, "[%zu] %a -> %a, want %a",
                         i, x[i], y[i], want);
        }
        st_close(f);
    }
    cr_expect_eq(y[9], 1.0f);
    free(x);
    free(y);
}

Test(st, zero_element_tensors)
{
    float one[2] = {1.5f, -2.5f};
    st_write_tensor_t wt[3] = {
        {.name = "empty_rows", .ndim = 2, .shape = {0, 5}, .data = NULL},
        {.name = "x", .ndim = 1, .shape = {2}, .data = one},
        {.name = "empty_cols", .ndim = 2, .shape = {3, 0}, .data = NULL},
    };
    const char *path = tpath("zero.safetensors");
    cr_assert_eq(st_write(path, wt, 3, ST_BF16), MOEMU_OK, "%s",
                 moemu_errmsg());
    st_file_t *f;
    cr_assert_eq(st_open(path, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(st_count(f), 3);
    cr_expect_eq(st_find(f, "empty_rows")->nbytes, 0);
    cr_expect_eq(st_find(f, "empty_cols")->nbytes, 0);
    float out[2] = {7, 7};
    int64_t s05[2] = {0, 5}, s2 = 2;
    cr_expect_eq(st_read_f32(f, "empty_rows", 2, s05, out), MOEMU_OK);
    cr_expect_eq(out[0], 7.0f, "nothing written for 0 elements");
    cr_expect_eq(st_read_f32(f, "x", 1, &s2, out), MOEMU_OK);
    cr_expect_eq(out[0], 1.5f);
    cr_expect_eq(out[1], -2.5f);
    st_close(f);

    /* No tensors at all is a valid file too. */
    const char *empty = tpath("none.safetensors");
    cr_assert_eq(st_write(empty, NULL, 0, ST_F32), MOEMU_OK, "%s",
                 moemu_errmsg());
    cr_assert_eq(st_open(empty, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(st_count(f), 0);
    cr_expect_null(st_find(f, "x"));
    st_close(f);
}

/* The bytes st_write produces: length, compact JSON in the given order with
 * metadata, space padding to 8, contiguous little-endian data. */
Test(st, written_layout)
{
    float z[3] = {1.0f, 2.0f, 3.0f}, a[1] = {-1.0f};
    st_write_tensor_t wt[2] = {
        {.name = "zeta", .ndim = 1, .shape = {3}, .data = z},
        {.name = "alpha", .ndim = 2, .shape = {1, 1}, .data = a},
    };
    const char *path = tpath("layout.safetensors");
    cr_assert_eq(st_write(path, wt, 2, ST_F32), MOEMU_OK);
    long size = file_size(path);
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp);
    uint8_t *b = malloc((size_t)size + 1);
    cr_assert_eq(fread(b, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    b[size] = 0;

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    cr_expect_eq(hlen % 8, 0, "header length %llu padded to 8",
                 (unsigned long long)hlen);
    cr_assert_eq((long)(8 + hlen + 16), size);
    char *h = strndup((const char *)b + 8, hlen);
    size_t end = strlen(h);
    while (end && h[end - 1] == ' ') end--;
    cr_expect(hlen - end < 8, "at most 7 spaces of padding");
    h[end] = 0;
    cr_expect_str_eq(h, "{\"__metadata__\":{\"format\":\"pt\"},"
                        "\"zeta\":{\"dtype\":\"F32\",\"shape\":[3],"
                        "\"data_offsets\":[0,12]},"
                        "\"alpha\":{\"dtype\":\"F32\",\"shape\":[1,1],"
                        "\"data_offsets\":[12,16]}}");
    const uint8_t one_le[4] = {0x00, 0x00, 0x80, 0x3f};
    cr_expect_eq(memcmp(b + 8 + hlen, one_le, 4), 0, "little endian 1.0f");
    const uint8_t minus_one_le[4] = {0x00, 0x00, 0x80, 0xbf};
    cr_expect_eq(memcmp(b + 8 + hlen + 12, minus_one_le, 4), 0);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    mode_t mask = umask(0);
    umask(mask);
    cr_expect_eq(sb.st_mode & 0777, 0666 & ~mask, "not mkstemp's 0600 but what the umask "
                 "allows a new file");
    free(h);
    free(b);
}

/* A file from another writer: header length not a multiple of 8, trailing
 * spaces, metadata, and tensors at odd offsets in the mapping. */
Test(st, handmade_unaligned)
{
    const char *hdr =
        "{\"__metadata__\":{\"source\":\"hand\"},"
        "\"flag\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
        "\"f32\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]},"
        "\"f16\":{\"dtype\":\"F16\",\"shape\":[1,2],\"data_offsets\":[9,13]},"
        "\"bf16\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[13,17]}}";
    uint8_t data[17] = {0xaa};
    float v[2] = {1.5f, -2.25f};
    memcpy(data + 1, v, 8); /* the test host is little endian */
    const uint8_t h16[4] = {0x00, 0x3c, 0x00, 0xc0};  /* 1.0, -2.0 */
    const uint8_t hb16[4] = {0x80, 0x3f, 0x49, 0x40}; /* 1.0, 3.140625 */
    memcpy(data + 9, h16, 4);
    memcpy(data + 13, hb16, 4);
    /* trailing spaces until every tensor but the first is misaligned */
    char padded[512];
    snprintf(padded, sizeof padded, "%s ", hdr);
    while (strlen(padded) % 8 != 2) strcat(padded, " ");
    size_t hl = strlen(padded);
    const char *path = tpath("hand.safetensors");
    write_raw(path, hl, padded, hl, data, sizeof data);

    st_file_t *f;
    cr_assert_eq(st_open(path, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(st_count(f), 4);
    cr_expect_neq(st_find(f, "f32")->offset % 4, 0, "unaligned");
    cr_expect_str_eq(st_at(f, 0)->name, "flag");
    cr_expect_eq(st_at(f, 0)->dtype, ST_U8);
    cr_expect_str_eq(st_at(f, 0)->dtype_name, "U8");
    uint8_t flag = 0;
    cr_assert_eq(st_read_bytes(f, st_at(f, 0), &flag), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(flag, 0xaa);
    float out[2];
    int64_t s1 = 1, s2 = 2, s12[2] = {1, 2};
    uint8_t bytes[2] = {0};
    cr_assert_eq(st_read_u8(f, "flag", 1, &s1, bytes), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(bytes[0], 0xaa);
    cr_expect_eq(st_read_u8(f, "flag", 1, &s2, bytes), MOEMU_ERR_FORMAT);
    expect_msg("tensor 'flag' in ");
    expect_msg("has shape [1], expected [2]");
    cr_expect_eq(st_read_u8(f, "f32", 1, &s2, bytes), MOEMU_ERR_FORMAT);
    expect_msg("has dtype F32, expected U8");
    cr_expect_eq(st_read_f32(f, "flag", 1, &s1, out), MOEMU_ERR_FORMAT);
    cr_assert_eq(st_read_f32(f, "f32", 1, &s2, out), MOEMU_OK);
    cr_expect(out[0] == 1.5f && out[1] == -2.25f);
    cr_assert_eq(st_read_f32(f, "f16", 2, s12, out), MOEMU_OK);
    cr_expect(out[0] == 1.0f && out[1] == -2.0f, "%g %g", out[0], out[1]);
    cr_assert_eq(st_read_f32(f, "bf16", 1, &s2, out), MOEMU_OK);
    cr_expect(out[0] == 1.0f && out[1] == 3.140625f, "%g %g", out[0], out[1]);
    st_close(f);
}

/* Other dtypes may sit in a file (their sizes are still checked where
 * known), but only F32/F16/BF16/F8_E4M3 convert to fp32. */
Test(st, other_dtypes)
{
    const char *path = write_header(
        "other.safetensors",
        "{\"i32\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"i64\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[8,16]},"
        "\"f64\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[16,24]},"
        "\"mask\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[24,27]},"
        "\"fp8\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],"
        "\"data_offsets\":[27,29]},"
        "\"odd\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[29,31]}}",
        31);
    st_file_t *f;
    cr_assert_eq(st_open(path, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(st_count(f), 6);
    cr_expect_eq(st_find(f, "i32")->dtype, ST_I32);
    cr_expect_eq(st_find(f, "i64")->dtype, ST_I64);
    cr_expect_eq(st_find(f, "f64")->dtype, ST_OTHER);
    cr_expect_str_eq(st_find(f, "f64")->dtype_name, "F64");
    cr_expect_str_eq(st_find(f, "fp8")->dtype_name, "F8_E4M3");
    cr_expect_eq(st_find(f, "fp8")->dtype, ST_F8_E4M3);
    cr_expect_eq(st_find(f, "odd")->nbytes, 2);
    float out[2];
    int64_t s2 = 2, s1 = 1;
    cr_expect_eq(st_read_f32(f, "i32", 1, &s2, out), MOEMU_ERR_FORMAT);
    expect_msg("'i32'");
    expect_msg("I32");
    expect_msg(path);
    cr_expect_eq(st_read_f32(f, "f64", 1, &s1, out), MOEMU_ERR_FORMAT);
    expect_msg("F64");
    st_close(f);

    /* a known size is enforced: F64 [2] needs 16 bytes, not 8 */
    expect_open_fails(
        write_header("f64bad.safetensors",
                     "{\"d\":{\"dtype\":\"F64\",\"shape\":[2],"
                     "\"data_offsets\":[0,8]}}",
                     8),
        MOEMU_ERR_FORMAT, SUBS("'d'", "16", "8"));
}

/* ---- malformed files */

Test(st, nonexistent_file)
{
    expect_open_fails(tpath("missing.safetensors"), MOEMU_ERR_IO,
                      SUBS("No such file"));
}

Test(st, directory_is_not_a_file)
{
    expect_open_fails(g_dir, MOEMU_ERR_IO, SUBS("not a regular file"));
}

Test(st, shorter_than_8_bytes)
{
    const char *p = tpath("short.safetensors");
    FILE *fp = fopen(p, "wb");
    fwrite("\x05\0\0\0\0", 1, 5, fp);
    fclose(fp);
    expect_open_fails(p, MOEMU_ERR_FORMAT, SUBS("5 bytes"));
    const char *e = tpath("empty.safetensors");
    fclose(fopen(e, "wb"));
    expect_open_fails(e, MOEMU_ERR_FORMAT, SUBS("0 bytes"));
}

Test(st, header_length_beyond_file)
{
    const char *hdr = "{}";
    const char *p = tpath("hlen.safetensors");
    write_raw(p, 1000, hdr, 2, "0123456789abcdefghij", 18);
    expect_open_fails(p, MOEMU_ERR_FORMAT, SUBS("1000", "28 bytes"));
    /* lengths that would overflow 8 + hlen */
    write_raw(p, UINT64_MAX, hdr, 2, NULL, 0);
    expect_open_fails(p, MOEMU_ERR_FORMAT, SUBS("18446744073709551615"));
    write_raw(p, UINT64_MAX - 7, hdr, 2, NULL, 0);
    expect_open_fails(p, MOEMU_ERR_FORMAT, SUBS("header length"));
    /* inside a (sparse) file but beyond any sane header */
    write_raw(p, 150000000, hdr, 2, NULL, 0);
    cr_assert_eq(truncate(p, 150000100), 0);
    expect_open_fails(p, MOEMU_ERR_FORMAT, SUBS("150000000", "limit"));
}

Test(st, malformed_json)
{
    expect_open_fails(write_header("bad.safetensors", "{\"a\": {\"dtype\"", 0),
                      MOEMU_ERR_FORMAT, SUBS("not valid JSON"));
    expect_open_fails(write_header("zero.safetensors", "", 0),
                      MOEMU_ERR_FORMAT, SUBS("not valid JSON"));
    /* the format forbids duplicate names */
    expect_open_fails(
        write_header("dup.safetensors",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[],"
                     "\"data_offsets\":[0,4]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[],"
                     "\"data_offsets\":[0,4]}}",
                     4),
        MOEMU_ERR_FORMAT, SUBS("not valid JSON", "duplicate"));
}

Test(st, json_not_an_object)
{
    expect_open_fails(write_header("arr.safetensors", "[1, 2]", 0),
                      MOEMU_ERR_FORMAT, SUBS("not an object"));
    expect_open_fails(write_header("ent.safetensors", "{\"w\": 3}", 0),
                      MOEMU_ERR_FORMAT, SUBS("'w'", "not an object"));
}

Test(st, missing_fields)
{
    expect_open_fails(
        write_header("nodt.safetensors",
                     "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
        MOEMU_ERR_FORMAT, SUBS("'w'", "dtype"));
    expect_open_fails(
        write_header("noshape.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4),
        MOEMU_ERR_FORMAT, SUBS("'w'", "shape"));
    expect_open_fails(
        write_header("nooff.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4),
        MOEMU_ERR_FORMAT, SUBS("'w'", "data_offsets"));
}

Test(st, bad_fields)
{
    expect_open_fails(
        write_header("dtnum.safetensors",
                     "{\"w\":{\"dtype\":7,\"shape\":[1],"
                     "\"data_offsets\":[0,4]}}",
                     4),
        MOEMU_ERR_FORMAT, SUBS("'w'", "dtype"));
    expect_open_fails(
        write_header("neg.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],"
                     "\"data_offsets\":[0,4]}}",
                     4),
        MOEMU_ERR_FORMAT, SUBS("'w'", "shape[1]"));
    expect_open_fails(
        write_header("frac.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],"
                     "\"data_offsets\":[0,4]}}",
                     4),
        MOEMU_ERR_FORMAT, SUBS("'w'", "shape[0]"));
    expect_open_fails(
        write_header("dims.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                     "\"data_offsets\":[0,4]}}",
                     4),
        MOEMU_ERR_FORMAT, SUBS("'w'", "9 dimensions", "8"));
    expect_open_fails(
        write_header("off3.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                     "\"data_offsets\":[0,4,8]}}",
                     8),
        MOEMU_ERR_FORMAT, SUBS("'w'", "data_offsets"));
    expect_open_fails(
        write_header("offneg.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                     "\"data_offsets\":[-4,0]}}",
                     8),
        MOEMU_ERR_FORMAT, SUBS("'w'", "data_offsets"));
    expect_open_fails(
        write_header("huge.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":"
                     "[4294967296,4294967296],\"data_offsets\":[0,4]}}",
                     4),
        MOEMU_ERR_FORMAT, SUBS("'w'", "[4294967296, 4294967296]"));
}

/* A tensor name is shown with its control characters escaped. */
Test(st, control_characters_in_names_escaped)
{
    expect_open_fails(
        write_header("ctl.safetensors",
                     "{\"w\\u001b[2J\\n\":{\"dtype\":7,\"shape\":[1],"
                     "\"data_offsets\":[0,4]}}",
                     4),
        MOEMU_ERR_FORMAT, SUBS("'w\\x1b[2J\\x0a'"));
    cr_expect_null(strchr(moemu_errmsg(), '\x1b'), "%s", moemu_errmsg());
}

Test(st, offsets_out_of_range)
{
    expect_open_fails(
        write_header("rev.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],"
                     "\"data_offsets\":[8,4]}}",
                     8),
        MOEMU_ERR_FORMAT, SUBS("'w'", "[8, 4]"));
    /* consistent with the shape, but past the 4 bytes of data: the file
     * would need 8 + header + 12 bytes */
    const char *hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],"
                      "\"data_offsets\":[4,12]}}";
    const char *p = write_header("past.safetensors", hdr, 4);
    char need[32], have[32];
    snprintf(need, sizeof need, "needs %zu bytes", 8 + strlen(hdr) + 12);
    snprintf(have, sizeof have, "has %zu bytes", 8 + strlen(hdr) + 4);
    expect_open_fails(p, MOEMU_ERR_FORMAT, SUBS("'w'", need, have));
}

Test(st, size_disagrees_with_shape)
{
    expect_open_fails(
        write_header("size.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                     "\"data_offsets\":[0,20]}}",
                     20),
        MOEMU_ERR_FORMAT, SUBS("'w'", "20 bytes", "[2, 3]", "F32", "24"));
    expect_open_fails(
        write_header("size16.safetensors",
                     "{\"w\":{\"dtype\":\"BF16\",\"shape\":[3],"
                     "\"data_offsets\":[0,12]}}",
                     12),
        MOEMU_ERR_FORMAT, SUBS("'w'", "12 bytes", "BF16", "needs 6"));
}

Test(st, truncated_data)
{
    float v[64] = {0};
    st_write_tensor_t wt[2] = {
        {.name = "a", .ndim = 1, .shape = {32}, .data = v},
        {.name = "b", .ndim = 2, .shape = {4, 8}, .data = v + 32},
    };
    const char *p = tpath("trunc.safetensors");
    cr_assert_eq(st_write(p, wt, 2, ST_F32), MOEMU_OK);
    long size = file_size(p);
    cr_assert_eq(truncate(p, size - 4), 0);
    char need[48], have[48];
    snprintf(need, sizeof need, "needs %ld bytes", size);
    snprintf(have, sizeof have, "has %ld bytes", size - 4);
    expect_open_fails(p, MOEMU_ERR_FORMAT,
                      SUBS("truncated", need, have, "'b'"));
}

/* ---- the data section exactly covered, as the reference reader demands:
 * sorted by offset, the tensors begin at 0, follow one another with no
 * overlap or gap, and the last one ends where the file does. */

/* st_open must fail with MOEMU_ERR_FORMAT and exactly this message. */
static void expect_open_msg(const char *path, const char *want)
{
    st_file_t *f = (st_file_t *)&f;
    moemu_errclear();
    cr_assert_eq(st_open(path, &f), MOEMU_ERR_FORMAT, "st_open(%s): %s", path,
                 moemu_errmsg());
    cr_expect_null(f);
    cr_expect_str_eq(moemu_errmsg(), want);
}

Test(st, overlapping_offsets)
{
    const char *p = write_header(
        "overlap.safetensors",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
        8);
    char want[600];
    snprintf(want, sizeof want,
             "%s: tensors 'a' (data_offsets [0, 8]) and 'b' ([4, 8]) "
             "overlap: every byte of data must belong to one tensor",
             p);
    expect_open_msg(p, want);
}

Test(st, gap_between_tensors)
{
    /* listed out of order: the check goes by offset, not header order */
    const char *p = write_header(
        "gap.safetensors",
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        12);
    char want[600];
    snprintf(want, sizeof want,
             "%s: no tensor holds the 4 bytes between tensor 'a' (ends at "
             "data offset 4) and tensor 'b' (begins at 8): the tensors must "
             "follow one another",
             p);
    expect_open_msg(p, want);

    p = write_header("lead.safetensors",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                     "\"data_offsets\":[4,8]}}",
                     8);
    snprintf(want, sizeof want,
             "%s: no tensor holds the 4 bytes before tensor 'a' (begins at "
             "data offset 4): the first tensor must begin at 0",
             p);
    expect_open_msg(p, want);
}

Test(st, trailing_bytes)
{
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                      "\"data_offsets\":[0,8]}}";
    const char *p = write_header("trail.safetensors", hdr, 12);
    char want[600];
    snprintf(want, sizeof want,
             "%s: the data after the header of %zu bytes has 12 bytes but "
             "the tensors end at 8 (tensor 'a'): no tensor holds its last 4 "
             "bytes (trailing bytes, or a wrong header length)",
             p, strlen(hdr));
    expect_open_msg(p, want);

    /* no tensor at all, yet data */
    p = write_header("none.safetensors", "{}", 3);
    snprintf(want, sizeof want,
             "%s: the data after the header of 2 bytes has 3 bytes but the "
             "tensors end at 0 (no tensors): no tensor holds its last 3 bytes "
             "(trailing bytes, or a wrong header length)",
             p);
    expect_open_msg(p, want);
}

/* The header's padding space falls into the data: still valid JSON, but
 * every tensor would be read one byte early. */
Test(st, header_length_one_short)
{
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                      "\"data_offsets\":[0,8]}} ";
    const char *p = tpath("short1.safetensors");
    uint8_t data[8] = {0};
    write_raw(p, strlen(hdr) - 1, hdr, strlen(hdr), data, sizeof data);
    char want[600];
    snprintf(want, sizeof want,
             "%s: the data after the header of %zu bytes has 9 bytes but "
             "the tensors end at 8 (tensor 'a'): no tensor holds its last 1 "
             "byte (trailing bytes, or a wrong header length)",
             p, strlen(hdr) - 1);
    expect_open_msg(p, want);
}

/* A checkpoint with more layers than the config: the extra tensors are
 * named, the first three and a count of the rest. */
Test(st, tensors_the_model_does_not_use)
{
    const char *base = "{\"vocab_size\":10,\"hidden_size\":8,"
                       "\"intermediate_size\":8,\"num_attention_heads\":2,"
                       "\"num_key_value_heads\":1,\"num_local_experts\":2,"
                       "\"num_experts_per_tok\":1,\"num_hidden_layers\":";
    char json[400];
    cfg_model_t two, one;
    snprintf(json, sizeof json, "%s2}", base);
    cr_assert_eq(cfg_parse(&two, json, "two"), MOEMU_OK, "%s", moemu_errmsg());
    snprintf(json, sizeof json, "%s1}", base);
    cr_assert_eq(cfg_parse(&one, json, "one"), MOEMU_OK, "%s", moemu_errmsg());
    wts_t w, r = {0};
    cr_assert_eq(wts_generate_all(&w, &two, 3), MOEMU_OK, "%s", moemu_errmsg());
    const char *p = tpath("deep.safetensors");
    cr_assert_eq(wts_dump(&w, p, 0), MOEMU_OK, "%s", moemu_errmsg());
    wts_free(&w);

    moemu_errclear();
    cr_assert_eq(wts_load(&r, &one, p), MOEMU_ERR_FORMAT, "%s", moemu_errmsg());
    char want[900];
    snprintf(want, sizeof want,
             "one: the checkpoint %s does not fit the model (1 problem):\n"
             "  13 tensors the model does not have: "
             "'model.layers.1.input_layernorm.weight' (in deep.safetensors), "
             "'model.layers.1.self_attn.q_proj.weight' (in deep.safetensors), "
             "'model.layers.1.self_attn.k_proj.weight' (in deep.safetensors), "
             "'model.layers.1.self_attn.v_proj.weight' (in deep.safetensors) and 9 more",
             p);
    cr_expect_str_eq(moemu_errmsg(), want);
    cr_expect_null(r.block, "nothing kept");
}

/* ---- st_read_f32's checks */

Test(st, read_errors)
{
    float v[12] = {0}, out[12];
    st_write_tensor_t wt = {.name = "m", .ndim = 2, .shape = {3, 4},
                            .data = v};
    const char *p = tpath("read.safetensors");
    cr_assert_eq(st_write(p, &wt, 1, ST_F16), MOEMU_OK);
    st_file_t *f;
    cr_assert_eq(st_open(p, &f), MOEMU_OK);

    int64_t s43[2] = {4, 3}, s12 = 12, s34[2] = {3, 4};
    cr_expect_eq(st_read_f32(f, "nope", 2, s34, out), MOEMU_ERR_FORMAT);
    char want[600];
    snprintf(want, sizeof want, "tensor 'nope' not found in %s", p);
    expect_msg(want);

    cr_expect_eq(st_read_f32(f, "m", 2, s43, out), MOEMU_ERR_FORMAT);
    expect_msg("'m'");
    expect_msg(p);
    expect_msg("has shape [3, 4], expected [4, 3]");

    cr_expect_eq(st_read_f32(f, "m", 1, &s12, out), MOEMU_ERR_FORMAT);
    expect_msg("[3, 4], expected [12]");

    cr_expect_eq(st_read_f32(f, "m", 2, s34, out), MOEMU_OK);
    st_close(f);
}

/* A file cut short after it was opened (cp over a checkpoint that is
 * loading): an I/O error naming the file, the tensor and both sizes, in
 * every thread that reads it; with a mapping this was SIGBUS. */
typedef struct {
    st_file_t *f;
    moemu_status_t st;
    char msg[1024];
} cut_read_t;

static void *cut_read(void *arg)
{
    cut_read_t *r = arg;
    int64_t shape = 1 << 16;
    float *out = malloc(sizeof(float) * (size_t)shape);
    r->st = out ? st_read_f32(r->f, "big", 1, &shape, out) : MOEMU_ERR_NOMEM;
    snprintf(r->msg, sizeof r->msg, "%s", moemu_errmsg());
    free(out);
    return NULL;
}

Test(st, file_cut_short_while_open_is_an_io_error)
{
    float *v = calloc(1 << 16, sizeof(float));
    st_write_tensor_t wt[2] = {{.name = "big", .ndim = 1, .shape = {1 << 16}, .data = v},
                               {.name = "small", .ndim = 1, .shape = {4}, .data = v}};
    const char *p = tpath("cut.safetensors");
    cr_assert_eq(st_write(p, wt, 2, ST_BF16), MOEMU_OK);
    long size = file_size(p);
    st_file_t *f;
    cr_assert_eq(st_open(p, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(truncate(p, 4096), 0);
    pthread_t th[4];
    cut_read_t r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (cut_read_t){.f = f};
        cr_assert_eq(pthread_create(&th[i], NULL, cut_read, &r[i]), 0);
    }
    char want[600], was[64];
    snprintf(want, sizeof want, "%s changed while it was read: tensor 'big' ends at byte", p);
    snprintf(was, sizeof was, "the file has 4096 bytes now (%ld when opened)", size);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(r[i].st, MOEMU_ERR_IO);
        cr_expect(strstr(r[i].msg, want) && strstr(r[i].msg, was), "%s", r[i].msg);
    }
    st_close(f);
    free(v);
}

/* ---- st_write: errors and atomicity */

Test(st, write_into_missing_directory)
{
    float v[1] = {1};
    st_write_tensor_t wt = {.name = "x", .ndim = 1, .shape = {1}, .data = v};
    const char *p = tpath("no/such/dir/x.safetensors");
    cr_expect_eq(st_write(p, &wt, 1, ST_F32), MOEMU_ERR_IO);
    expect_msg(p);
    expect_msg(strerror(ENOENT));
    cr_expect_eq(dir_entries(g_dir), 0, "nothing left behind");
}

/* rename onto a directory fails after the data is written: the temporary
 * file must go. */
Test(st, write_failure_removes_temporary)
{
    float v[1] = {1};
    st_write_tensor_t wt = {.name = "x", .ndim = 1, .shape = {1}, .data = v};
    const char *p = tpath("adir");
    cr_assert_eq(mkdir(p, 0755), 0);
    cr_expect_eq(st_write(p, &wt, 1, ST_F32), MOEMU_ERR_IO);
    expect_msg(p);
    expect_msg(strerror(EISDIR));
    cr_expect_eq(dir_entries(g_dir), 1, "only the directory itself");
    cr_expect_eq(dir_entries(p), 0);
}

Test(st, write_invalid_arguments)
{
    float v[4] = {0};
    st_write_tensor_t dup[3] = {
        {.name = "w", .ndim = 1, .shape = {1}, .data = v},
        {.name = "u", .ndim = 1, .shape = {1}, .data = v},
        {.name = "w", .ndim = 1, .shape = {2}, .data = v},
    };
    const char *p = tpath("inv.safetensors");
    cr_expect_eq(st_write(p, dup, 3, ST_F32), MOEMU_ERR_INVALID);
    expect_msg("'w'");
    expect_msg("duplicate");
    expect_msg(p);

    st_write_tensor_t meta = {.name = "__metadata__", .ndim = 1,
                              .shape = {1}, .data = v};
    cr_expect_eq(st_write(p, &meta, 1, ST_F32), MOEMU_ERR_INVALID);
    expect_msg("reserved");

    st_write_tensor_t neg = {.name = "n", .ndim = 2, .shape = {2, -1},
                             .data = v};
    cr_expect_eq(st_write(p, &neg, 1, ST_F32), MOEMU_ERR_INVALID);
    expect_msg("[2, -1]");

    st_write_tensor_t nodata = {.name = "d", .ndim = 1, .shape = {4}};
    cr_expect_eq(st_write(p, &nodata, 1, ST_F32), MOEMU_ERR_INVALID);
    expect_msg("'d'");

    st_write_tensor_t ok = {.name = "o", .ndim = 1, .shape = {1}, .data = v};
    cr_expect_eq(st_write(p, &ok, 1, ST_I64), MOEMU_ERR_INVALID);
    cr_expect_eq(st_write(p, &ok, -1, ST_F32), MOEMU_ERR_INVALID);
    cr_expect_eq(dir_entries(g_dir), 0, "no file for a refused write");
}

/* Rewriting a file replaces it whole; a reader that had it open keeps the
 * old contents. */
Test(st, overwrite_replaces_whole_file)
{
    float v1[4] = {1, 2, 3, 4}, v2[2] = {9, 8}, out[4];
    const char *p = tpath("over.safetensors");
    st_write_tensor_t w1 = {.name = "t", .ndim = 1, .shape = {4}, .data = v1};
    cr_assert_eq(st_write(p, &w1, 1, ST_F32), MOEMU_OK);
    st_file_t *old;
    cr_assert_eq(st_open(p, &old), MOEMU_OK);

    st_write_tensor_t w2 = {.name = "t", .ndim = 1, .shape = {2}, .data = v2};
    cr_assert_eq(st_write(p, &w2, 1, ST_BF16), MOEMU_OK);
    cr_expect_eq(dir_entries(g_dir), 1);

    int64_t s4 = 4, s2 = 2;
    cr_expect_eq(st_read_f32(old, "t", 1, &s4, out), MOEMU_OK);
    cr_expect_arr_eq(out, v1, sizeof v1);
    st_close(old);

    st_file_t *f;
    cr_assert_eq(st_open(p, &f), MOEMU_OK);
    cr_expect_eq(st_read_f32(f, "t", 1, &s2, out), MOEMU_OK);
    cr_expect(out[0] == 9 && out[1] == 8);
    st_close(f);
}

/* Many tensors: lookup by name stays right (st_find sorts an index). */
Test(st, many_tensors_find)
{
    enum { N = 500 };
    static char names[N][32];
    static float vals[N];
    st_write_tensor_t wt[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.w", (i * 37) % N);
        vals[i] = (float)i;
        wt[i] = (st_write_tensor_t){.name = names[i], .ndim = 0,
                                    .data = &vals[i]};
    }
    const char *p = tpath("many.safetensors");
    cr_assert_eq(st_write(p, wt, N, ST_F32), MOEMU_OK, "%s", moemu_errmsg());
    st_file_t *f;
    cr_assert_eq(st_open(p, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(st_count(f), N);
    for (int i = 0; i < N; i++) {
        float x = -1;
        cr_assert_eq(st_read_f32(f, names[i], 0, NULL, &x), MOEMU_OK);
        cr_assert_eq(x, (float)i, "%s", names[i]);
        cr_assert_str_eq(st_at(f, i)->name, names[i]);
    }
    st_close(f);
}

/* ---- float8_e4m3fn */

/* The OCP FP8 E4M3 definition, written independently of the codec:
 * (-1)^s * 2^(e-7) * (1 + m/8), or 2^-6 * m/8 when e is 0; S.1111.111 NaN. */
static double ref_e4m3(unsigned b)
{
    unsigned s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    double mag = e ? pow(2.0, (double)e - 7.0) * (1.0 + m / 8.0) : pow(2.0, -6.0) * (m / 8.0);
    return s ? -mag : mag;
}

Test(st, e4m3_decodes_every_byte)
{
    for (unsigned b = 0; b < 256; b++) {
        float v = emu_e4m3_to_f32((uint8_t)b);
        double r = ref_e4m3(b);
        if ((b & 0x7f) == 0x7f) {
            cr_expect(isnan(v), "0x%02x gives %g, not NaN", b, v);
            continue;
        }
        cr_expect(!isnan(v) && (double)v == r && !signbit(v) == !(b & 0x80),
                  "0x%02x gives %a, expected %a", b, v, r);
    }
    cr_expect_eq(emu_e4m3_to_f32(0x7e), 448.0f);
    cr_expect_eq(emu_e4m3_to_f32(0x08), 0x1p-6f); /* the smallest normal */
    cr_expect_eq(emu_e4m3_to_f32(0x07), 7 * 0x1p-9f); /* the largest subnormal */
    cr_expect_eq(emu_e4m3_to_f32(0x01), 0x1p-9f);
    cr_expect(signbit(emu_e4m3_to_f32(0x80)));
}

Test(st, e4m3_encodes_to_nearest_even_and_overflows_to_nan)
{
    for (unsigned b = 0; b < 256; b++) /* every value back to its code, NaN included */
        cr_expect_eq(emu_f32_to_e4m3(emu_e4m3_to_f32((uint8_t)b)), b, "0x%02x", b);
    for (unsigned b = 0; b < 0x7e; b++) { /* neighbours b, b+1; an even code has an even mantissa */
        float lo = emu_e4m3_to_f32((uint8_t)b), hi = emu_e4m3_to_f32((uint8_t)(b + 1));
        float mid = (lo + hi) / 2; /* exact: 4 bits of mantissa */
        unsigned even = b & 1 ? b + 1 : b;
        cr_expect_eq(emu_f32_to_e4m3(mid), even, "tie %a", mid);
        cr_expect_eq(emu_f32_to_e4m3(-mid), even | 0x80, "tie %a", -mid);
        cr_expect_eq(emu_f32_to_e4m3(nextafterf(mid, 0)), b, "below %a", mid);
        cr_expect_eq(emu_f32_to_e4m3(nextafterf(mid, 1000)), b + 1, "above %a", mid);
    }
    /* torch's cast: what rounds above 448 is NaN (464 ties down to 448) */
    cr_expect_eq(emu_f32_to_e4m3(464.0f), 0x7e);
    cr_expect_eq(emu_f32_to_e4m3(-464.0f), 0xfe);
    cr_expect_eq(emu_f32_to_e4m3(nextafterf(464.0f, 1000)), 0x7f);
    cr_expect_eq(emu_f32_to_e4m3(1e9f), 0x7f);
    cr_expect_eq(emu_f32_to_e4m3(INFINITY), 0x7f);
    cr_expect_eq(emu_f32_to_e4m3(-INFINITY), 0xff);
    cr_expect_eq(emu_f32_to_e4m3(NAN), 0x7f);
    cr_expect_eq(emu_f32_to_e4m3(0x1p-10f), 0x00); /* half the smallest subnormal: to 0 */
    cr_expect_eq(emu_f32_to_e4m3(1e-30f), 0x00);
    cr_expect_eq(emu_f32_to_e4m3(-0.0f), 0x80);
    cr_expect_eq(st_dtype_size(ST_F8_E4M3), 1);
    cr_expect_eq(st_dtype_size(ST_U8), 1);
    cr_expect_eq(st_dtype_size(ST_OTHER), 0);
}

/* U8 written from bytes as they are (MXFP4's blocks and scales) beside
 * an F32 tensor, and viewed in the mapping. */
Test(st, u8_written_as_bytes)
{
    const uint8_t raw[5] = {0x00, 0x7f, 0x80, 0xff, 0x21};
    float v[1] = {2.5f};
    st_write_tensor_t ts[2] = {{.name = "b", .ndim = 2, .shape = {1, 5}, .data = (const float *)raw},
                               {.name = "v", .ndim = 1, .shape = {1}, .data = v}};
    st_dtype_t dts[2] = {ST_U8, ST_F32};
    const char *path = tpath("u8.safetensors");
    cr_assert_eq(st_write_dtypes(path, ts, 2, dts), MOEMU_OK, "%s", moemu_errmsg());
    st_file_t *f;
    cr_assert_eq(st_open(path, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_str_eq(st_find(f, "b")->dtype_name, "U8");
    cr_expect_eq(st_find(f, "b")->nbytes, 5);
    uint8_t back[5];
    int64_t shape[2] = {1, 5}, one = 1;
    cr_assert_eq(st_read_u8(f, "b", 2, shape, back), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(memcmp(back, raw, 5), 0);
    float out;
    cr_assert_eq(st_read_f32(f, "v", 1, &one, &out), MOEMU_OK);
    cr_expect(out == 2.5f);
    st_close(f);
}

/* F8_E4M3 written (rounded) and read back, beside an F32 tensor in the
 * same file as an FP8 checkpoint keeps them. */
Test(st, f8_e4m3_written_and_read_with_mixed_dtypes)
{
    float w[6] = {1.0f, -2.5f, 0.3f, 448.0f, 1e6f, 0x1p-9f}, sc[2] = {0.5f, 3.0f};
    st_write_tensor_t ts[2] = {{.name = "w", .ndim = 2, .shape = {2, 3}, .data = w},
                               {.name = "w_scale_inv", .ndim = 1, .shape = {2}, .data = sc}};
    st_dtype_t dts[2] = {ST_F8_E4M3, ST_F32};
    const char *path = tpath("fp8.safetensors");
    cr_assert_eq(st_write_dtypes(path, ts, 2, dts), MOEMU_OK, "%s", moemu_errmsg());
    st_file_t *f;
    cr_assert_eq(st_open(path, &f), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(st_find(f, "w")->nbytes, 6);
    cr_expect_str_eq(st_find(f, "w")->dtype_name, "F8_E4M3");
    uint8_t raw[6];
    cr_assert_eq(st_read_bytes(f, st_find(f, "w"), raw), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(raw[2], emu_f32_to_e4m3(0.3f));
    cr_expect_eq(raw[4], 0x7f);
    float out[6], s2[2];
    int64_t shape[2] = {2, 3}, two = 2;
    cr_assert_eq(st_read_f32(f, "w", 2, shape, out), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(out[0] == 1.0f && out[1] == -2.5f && out[3] == 448.0f && out[5] == 0x1p-9f);
    cr_expect(out[2] == 0.3125f, "0.3 rounds to 0.3125, got %g", out[2]); /* 1.25 * 2^-2 */
    cr_expect(isnan(out[4]));
    cr_assert_eq(st_read_f32(f, "w_scale_inv", 1, &two, s2), MOEMU_OK);
    cr_expect(s2[0] == 0.5f && s2[1] == 3.0f);
    st_close(f);

    cr_assert_eq(st_write(tpath("all8.safetensors"), ts, 1, ST_F8_E4M3), MOEMU_OK);
    cr_expect_eq(file_size(tpath("all8.safetensors")) % 8, 6); /* 8-aligned header + 6 bytes */
    dts[1] = ST_OTHER;
    cr_expect_eq(st_write_dtypes(tpath("bad.safetensors"), ts, 2, dts), MOEMU_ERR_INVALID);
    expect_msg("cannot be written");
}
