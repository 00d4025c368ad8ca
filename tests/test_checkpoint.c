/* checkpoint: sharded writes read back bit for bit at every shard size,
 * the Hub's file names and index, the refusals of ckpt_write, every way an
 * index and its shards can disagree (each message naming the files and
 * tensors), ckpt_read_all's all-at-once report, FP8 weights with their
 * block scales, MXFP4 experts (gpt-oss's blocks and scales) decoded exactly
 * through wts_load and their problems, the ignore predicate, and size
 * strings. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/models/checkpoint.h"
#include "engine/models/config.h"
#include "engine/models/weights.h"

#define TMPDIR_NAME "moemu-ckpt"
#include "tests/tmpdir.h"

TestSuite(ckpt, .init = tmpdir_setup, .fini = tmpdir_teardown);

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void assert_has(const char *msg, const char *part)
{
    cr_assert(strstr(msg, part), "message lacks \"%s\":\n%s", part, msg);
}

/* ---- a small model: 2-D, 1-D and 3-D (stacked experts) tensors */

enum { NT = 6 };
static const char *const g_names[NT] = {
    "model.embed_tokens.weight",          "model.layers.0.input_layernorm.weight",
    "model.layers.0.mlp.experts.w1",      "model.layers.0.mlp.gate.weight",
    "model.norm.weight",                  "lm_head.weight",
};
static const int g_ndim[NT] = {2, 1, 3, 2, 1, 2};
static const int64_t g_shape[NT][3] = {{16, 8}, {8}, {4, 6, 8}, {4, 8}, {8}, {16, 8}};

typedef struct {
    st_write_tensor_t ts[NT];
    float *data[NT];
    float *back[NT];
    ckpt_want_t want[NT];
} model_t;

static int64_t numel(int i)
{
    int64_t n = 1;
    for (int d = 0; d < g_ndim[i]; d++) n *= g_shape[i][d];
    return n;
}

/* Seeded values; with exact set, ones BF16 holds exactly (k/8, small k). */
static void model_make(model_t *m, unsigned seed, bool exact)
{
    srand(seed);
    for (int i = 0; i < NT; i++) {
        int64_t n = numel(i);
        m->data[i] = malloc((size_t)n * sizeof(float));
        m->back[i] = calloc((size_t)n, sizeof(float));
        for (int64_t k = 0; k < n; k++)
            m->data[i][k] = exact ? (float)(rand() % 64 - 32) / 8.0f
                                  : (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
        m->ts[i] = (st_write_tensor_t){.name = g_names[i], .ndim = g_ndim[i], .data = m->data[i]};
        memcpy(m->ts[i].shape, g_shape[i], sizeof g_shape[i]);
        m->want[i] = (ckpt_want_t){g_names[i], g_ndim[i], g_shape[i], m->back[i]};
    }
}

static void model_free(model_t *m)
{
    for (int i = 0; i < NT; i++) {
        free(m->data[i]);
        free(m->back[i]);
    }
}

static void assert_same(const model_t *m)
{
    for (int i = 0; i < NT; i++)
        cr_assert_eq(memcmp(m->data[i], m->back[i], (size_t)numel(i) * sizeof(float)), 0,
                     "tensor %s differs after the round trip", g_names[i]);
}

static ckpt_t *open_ok(const char *path)
{
    ckpt_t *ck = NULL;
    moemu_status_t st = ckpt_open(path, &ck);
    cr_assert_eq(st, MOEMU_OK, "ckpt_open %s: %s", path, moemu_errmsg());
    return ck;
}

/* The status of opening path; the message is moemu_errmsg(). */
static moemu_status_t open_bad(const char *path)
{
    ckpt_t *ck = (ckpt_t *)1;
    moemu_status_t st = ckpt_open(path, &ck);
    cr_assert_null(ck, "a failed open leaves *out NULL");
    return st;
}

static void write_ok(const char *path, const model_t *m, st_dtype_t dt, int64_t shard)
{
    moemu_status_t st = ckpt_write(path, m->ts, NT, dt, shard);
    cr_assert_eq(st, MOEMU_OK, "ckpt_write %s: %s", path, moemu_errmsg());
}

/* Bytes of tensor i in F32. */
static int64_t f32_bytes(int i) { return numel(i) * 4; }

/* ---- round trips */

/* shard size -> expected shard count (0: one model.safetensors). The F32
 * bytes are 512, 32, 768, 128, 32, 512 (1984 in all). */
static const struct {
    int64_t shard;
    int nshards;
} g_splits[] = {
    {0, 0},       /* no limit */
    {1984, 0},    /* exactly fits */
    {1 << 20, 0}, /* far more than needed */
    {1, 6},       /* one tensor per shard */
    {32, 6},      /* small ones alone too: 512 | 32 | 768 | 128 | 32 | 512 */
    {800, 3},     /* 512+32 | 768 | 128+32+512 */
    {1983, 2},    /* everything but the last */
};

static int split_shards_expected(int64_t shard)
{
    int ns = 0;
    int64_t cur = 0;
    for (int i = 0; i < NT; i++) {
        if (ns == 0 || cur > shard || cur + f32_bytes(i) > shard) {
            ns++;
            cur = 0;
        }
        cur += f32_bytes(i);
    }
    return ns;
}

Test(ckpt, sharded_round_trip_is_bit_identical_at_every_shard_size)
{
    model_t m;
    model_make(&m, 7, false);
    for (size_t s = 0; s < sizeof g_splits / sizeof g_splits[0]; s++) {
        char name[32];
        snprintf(name, sizeof name, "out%zu", s);
        const char *dir = tpath(name);
        if (g_splits[s].shard == 0) mkdir(dir, 0777); /* no limit: a directory takes one file */
        write_ok(dir, &m, ST_F32, g_splits[s].shard);
        int ns = g_splits[s].nshards;
        if (ns) cr_assert_eq(split_shards_expected(g_splits[s].shard), ns, "test table");
        cr_assert_eq(dir_entries(dir), ns ? ns + 1 : 1, "files in %s (shard %lld)", dir,
                     (long long)g_splits[s].shard);
        ckpt_t *ck = open_ok(dir);
        cr_assert_eq(ckpt_count(ck), NT);
        for (int i = 0; i < NT; i++) memset(m.back[i], 0, (size_t)numel(i) * sizeof(float));
        cr_assert_eq(ckpt_read_all(ck, m.want, NT, "tiny"), MOEMU_OK, "%s", moemu_errmsg());
        assert_same(&m);
        if (ns) {
            char last[64];
            snprintf(last, sizeof last, "model-%05d-of-%05d.safetensors", ns, ns);
            cr_assert_str_eq(ckpt_file_of(ck, ckpt_index(ck, "lm_head.weight")), last);
        } else {
            cr_assert_str_eq(ckpt_file_of(ck, 0), "model.safetensors");
        }
        ckpt_close(ck);
    }
    model_free(&m);
}

Test(ckpt, one_tensor_per_shard_has_the_hub_names_in_tensor_order)
{
    model_t m;
    model_make(&m, 3, false);
    write_ok(tpath("d"), &m, ST_F32, 1);
    ckpt_t *ck = open_ok(tpath("d/model.safetensors.index.json")); /* the index itself */
    for (int i = 0; i < NT; i++) {
        char want[64];
        snprintf(want, sizeof want, "model-%05d-of-00006.safetensors", i + 1);
        int k = ckpt_index(ck, g_names[i]);
        cr_assert_geq(k, 0, "%s", g_names[i]);
        cr_assert_str_eq(ckpt_file_of(ck, k), want);
        cr_assert_str_eq(ckpt_at(ck, k)->name, g_names[i]);
    }
    cr_assert_eq(ckpt_index(ck, "nope"), -1);
    cr_assert_null(ckpt_at(ck, NT));
    cr_assert_null(ckpt_file_of(ck, -1));
    ckpt_close(ck);
    model_free(&m);
}

Test(ckpt, index_is_what_save_pretrained_writes)
{
    model_t m;
    model_make(&m, 5, false);
    write_ok(tpath("d"), &m, ST_BF16, 600); /* BF16: 256 16 384 64 16 256 -> 272 | 384+64+16 | 256 */
    json_error_t err;
    json_t *root = json_load_file(tpath("d/model.safetensors.index.json"), 0, &err);
    cr_assert_not_null(root, "%s", err.text);
    json_t *total = json_object_get(json_object_get(root, "metadata"), "total_size");
    cr_assert_eq(json_integer_value(total), 992);
    json_t *wm = json_object_get(root, "weight_map");
    cr_assert_eq(json_object_size(wm), NT);
    cr_assert_str_eq(json_string_value(json_object_get(wm, g_names[1])),
                     "model-00001-of-00003.safetensors");
    cr_assert_str_eq(json_string_value(json_object_get(wm, g_names[4])),
                     "model-00002-of-00003.safetensors");
    cr_assert_str_eq(json_string_value(json_object_get(wm, g_names[5])),
                     "model-00003-of-00003.safetensors");
    json_decref(root);
    cr_assert_eq(dir_entries(tpath("d")), 4, "no temporary left behind");
    model_free(&m);
}

Test(ckpt, three_d_tensors_round_trip_in_bf16_and_f16)
{
    model_t m;
    model_make(&m, 11, true); /* values BF16 and F16 hold exactly */
    write_ok(tpath("b"), &m, ST_BF16, 200);
    write_ok(tpath("h"), &m, ST_F16, 0);
    const char *dirs[] = {tpath("b"), tpath("h")};
    for (int d = 0; d < 2; d++) {
        ckpt_t *ck = open_ok(dirs[d]);
        const st_tensor_t *t = ckpt_at(ck, ckpt_index(ck, "model.layers.0.mlp.experts.w1"));
        cr_assert_eq(t->ndim, 3);
        cr_assert(t->shape[0] == 4 && t->shape[1] == 6 && t->shape[2] == 8);
        cr_assert_eq(ckpt_read_all(ck, m.want, NT, "tiny"), MOEMU_OK, "%s", moemu_errmsg());
        assert_same(&m);
        ckpt_close(ck);
    }
    model_free(&m);
}

Test(ckpt, single_file_paths)
{
    model_t m;
    model_make(&m, 1, false);
    write_ok(tpath("w.safetensors"), &m, ST_F32, 0);
    write_ok(tpath("w.safetensors"), &m, ST_F32, 1 << 20); /* a file is replaced */
    ckpt_t *ck = open_ok(tpath("w.safetensors"));
    cr_assert_str_eq(ckpt_file_of(ck, 0), "w.safetensors");
    cr_assert_eq(ckpt_read_all(ck, m.want, NT, "tiny"), MOEMU_OK, "%s", moemu_errmsg());
    assert_same(&m);
    ckpt_close(ck);
    /* shards asked for: a name without the suffix is a directory, created */
    write_ok(tpath("new"), &m, ST_F32, 1 << 20);
    cr_assert(exists(tpath("new/model.safetensors")));
    /* none asked for: any name is the file, as --dump-weights FILE writes */
    write_ok(tpath("plain"), &m, ST_F32, 0);
    struct stat sb;
    cr_assert(stat(tpath("plain"), &sb) == 0 && S_ISREG(sb.st_mode));
    model_free(&m);
}

/* ---- ckpt_write's refusals */

Test(ckpt, write_refuses_shards_into_a_file_name)
{
    model_t m;
    model_make(&m, 1, false);
    moemu_status_t st = ckpt_write(tpath("w.safetensors"), m.ts, NT, ST_F32, 100);
    cr_assert_eq(st, MOEMU_ERR_INVALID);
    assert_has(moemu_errmsg(), "w.safetensors");
    assert_has(moemu_errmsg(), "give a directory");
    cr_assert_eq(dir_entries(g_dir), 0);
    model_free(&m);
}

Test(ckpt, write_refuses_a_directory_holding_a_checkpoint_but_not_other_files)
{
    model_t m;
    model_make(&m, 1, false);
    mkdir(tpath("d"), 0777);
    FILE *f = fopen(tpath("d/config.json"), "w");
    fputs("{}\n", f);
    fclose(f);
    write_ok(tpath("d"), &m, ST_F32, 100); /* beside config.json: fine */
    cr_assert_eq(dir_entries(tpath("d")), 1 + 6 + 1);
    moemu_status_t st = ckpt_write(tpath("d"), m.ts, NT, ST_F32, 0);
    cr_assert_eq(st, MOEMU_ERR_INVALID);
    assert_has(moemu_errmsg(), "already holds a checkpoint");
    assert_has(moemu_errmsg(), "-of-00006.safetensors");
    cr_assert_eq(dir_entries(tpath("d")), 1 + 6 + 1, "nothing touched");
    model_free(&m);
}

Test(ckpt, failed_write_leaves_nothing)
{
    model_t m;
    model_make(&m, 1, false);
    /* refused up front: the same name in two shards */
    m.ts[4].name = m.ts[1].name;
    cr_assert_eq(ckpt_write(tpath("d"), m.ts, NT, ST_F32, 600), MOEMU_ERR_INVALID);
    assert_has(moemu_errmsg(), "'model.layers.0.input_layernorm.weight' is a duplicate");
    cr_assert(!exists(tpath("d")));
    m.ts[4].name = g_names[4];
    /* failing at the last shard, after three were written */
    m.ts[5].data = NULL;
    cr_assert_eq(ckpt_write(tpath("d"), m.ts, NT, ST_F32, 600), MOEMU_ERR_INVALID);
    assert_has(moemu_errmsg(), "'lm_head.weight' has NULL data");
    cr_assert(!exists(tpath("d")), "the directory it created is gone");
    mkdir(tpath("e"), 0777);
    cr_assert_eq(ckpt_write(tpath("e"), m.ts, NT, ST_F32, 600), MOEMU_ERR_INVALID);
    cr_assert_eq(dir_entries(tpath("e")), 0, "no shard, no temporary left");
    cr_assert_eq(dir_entries(g_dir), 1);
    model_free(&m);
}

/* ---- opening: every disagreement, named */

/* A checkpoint of six shards (one tensor each) in g_dir/d. */
static void write_six(model_t *m)
{
    model_make(m, 2, false);
    write_ok(tpath("d"), m, ST_F32, 1);
}

static json_t *index_load(void)
{
    json_error_t err;
    json_t *root = json_load_file(tpath("d/model.safetensors.index.json"), 0, &err);
    cr_assert_not_null(root, "%s", err.text);
    return root;
}

static void index_save(json_t *root)
{
    cr_assert_eq(json_dump_file(root, tpath("d/model.safetensors.index.json"), JSON_INDENT(2)), 0);
    json_decref(root);
}

Test(ckpt, a_shard_the_index_names_that_is_not_there)
{
    model_t m;
    write_six(&m);
    unlink(tpath("d/model-00003-of-00006.safetensors"));
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    const char *msg = moemu_errmsg();
    assert_has(msg, "model.safetensors.index.json names the shard");
    assert_has(msg, "model-00003-of-00006.safetensors");
    assert_has(msg, "model.layers.0.mlp.experts.w1");
    assert_has(msg, "not there");
    model_free(&m);
}

/* A shard truncated after the checkpoint was opened (cp over it while it
 * loads): an I/O error naming the shard and the tensor, never SIGBUS. */
Test(ckpt, a_shard_cut_short_while_loading)
{
    model_t m;
    write_six(&m);
    ckpt_t *ck = open_ok(tpath("d"));
    cr_assert_eq(truncate(tpath("d/model-00003-of-00006.safetensors"), 100), 0);
    cr_assert_eq(ckpt_read_all(ck, m.want, NT, "tiny"), MOEMU_ERR_IO);
    const char *msg = moemu_errmsg();
    assert_has(msg, "could not be read");
    assert_has(msg, "model-00003-of-00006.safetensors changed while it was read");
    assert_has(msg, "tensor 'model.layers.0.mlp.experts.w1'");
    ckpt_close(ck);
    model_free(&m);
}

Test(ckpt, a_shard_that_is_not_safetensors)
{
    model_t m;
    write_six(&m);
    FILE *f = fopen(tpath("d/model-00002-of-00006.safetensors"), "w");
    fputs("garbage", f);
    fclose(f);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "model-00002-of-00006.safetensors: file has 7 bytes");
    model_free(&m);
}

Test(ckpt, a_shard_that_cannot_be_read_is_io)
{
    model_t m;
    write_six(&m);
    unlink(tpath("d/model-00004-of-00006.safetensors"));
    mkdir(tpath("d/model-00004-of-00006.safetensors"), 0777);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_IO);
    assert_has(moemu_errmsg(), "model-00004-of-00006.safetensors");
    model_free(&m);
}

Test(ckpt, a_tensor_in_two_shards_names_both)
{
    model_t m;
    write_six(&m);
    /* shard 5 rewritten holding model.norm.weight and a copy of lm_head */
    st_write_tensor_t two[2] = {m.ts[4], m.ts[5]};
    cr_assert_eq(st_write(tpath("d/model-00005-of-00006.safetensors"), two, 2, ST_F32), MOEMU_OK);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    const char *msg = moemu_errmsg();
    assert_has(msg, "tensor 'lm_head.weight' is in two shards, "
                    "model-00005-of-00006.safetensors and model-00006-of-00006.safetensors");
    cr_assert_null(strstr(msg, "puts it in"), "one line for one problem:\n%s", msg);
    model_free(&m);
}

Test(ckpt, a_tensor_of_the_index_missing_from_its_shard)
{
    model_t m;
    write_six(&m);
    json_t *root = index_load();
    json_object_set_new(json_object_get(root, "weight_map"), "model.layers.0.ghost",
                        json_string("model-00002-of-00006.safetensors"));
    index_save(root);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "puts tensor 'model.layers.0.ghost' in "
                               "model-00002-of-00006.safetensors, which does not hold it");
    model_free(&m);
}

Test(ckpt, a_tensor_of_a_shard_the_index_does_not_list)
{
    model_t m;
    write_six(&m);
    json_t *root = index_load();
    json_object_del(json_object_get(root, "weight_map"), "model.norm.weight");
    index_save(root);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "model-00005-of-00006.safetensors holds tensor "
                               "'model.norm.weight', which the index");
    assert_has(moemu_errmsg(), "does not list");
    model_free(&m);
}

Test(ckpt, a_tensor_the_index_puts_in_another_shard)
{
    model_t m;
    write_six(&m);
    json_t *root = index_load();
    json_object_set_new(json_object_get(root, "weight_map"), "model.norm.weight",
                        json_string("model-00001-of-00006.safetensors"));
    index_save(root);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "model-00005-of-00006.safetensors holds tensor "
                               "'model.norm.weight', but the index");
    assert_has(moemu_errmsg(), "puts it in model-00001-of-00006.safetensors");
    model_free(&m);
}

Test(ckpt, total_size_that_disagrees)
{
    model_t m;
    write_six(&m);
    json_t *root = index_load();
    json_object_set_new(json_object_get(root, "metadata"), "total_size", json_integer(1985));
    index_save(root);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "metadata.total_size is 1985 bytes, but the 6 tensors of its 6 "
                               "shards hold 1984 bytes");
    /* absent: not checked; a whole real (as some exporters write): read */
    root = index_load();
    json_object_set_new(json_object_get(root, "metadata"), "total_size", json_real(1984.0));
    index_save(root);
    ckpt_close(open_ok(tpath("d")));
    root = index_load();
    json_object_del(root, "metadata");
    index_save(root);
    ckpt_close(open_ok(tpath("d")));
    model_free(&m);
}

Test(ckpt, every_problem_at_once_one_a_line)
{
    model_t m;
    write_six(&m);
    json_t *root = index_load();
    json_t *wm = json_object_get(root, "weight_map");
    json_object_del(wm, "model.norm.weight");
    json_object_set_new(wm, "ghost", json_string("model-00001-of-00006.safetensors"));
    json_object_set_new(json_object_get(root, "metadata"), "total_size", json_integer(7));
    index_save(root);
    unlink(tpath("d/model-00003-of-00006.safetensors"));
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    const char *msg = moemu_errmsg();
    assert_has(msg, "3 problems with the checkpoint:\n  ");
    assert_has(msg, "\n  ");
    assert_has(msg, "model-00003-of-00006.safetensors (for 1 tensor");
    assert_has(msg, "'model.norm.weight', which the index");
    assert_has(msg, "puts tensor 'ghost' in model-00001-of-00006.safetensors");
    cr_assert_null(strstr(msg, "total_size"), "not checked with a shard missing:\n%s", msg);
    model_free(&m);
}

Test(ckpt, a_directory_without_a_checkpoint_says_what_was_looked_for)
{
    mkdir(tpath("empty"), 0777);
    cr_assert_eq(open_bad(tpath("empty")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "empty/model.safetensors (one file)");
    assert_has(moemu_errmsg(), "empty/model.safetensors.index.json (shards)");
    cr_assert_eq(open_bad(tpath("nowhere")), MOEMU_ERR_IO);
    assert_has(moemu_errmsg(), "nowhere");
}

Test(ckpt, both_kinds_in_one_directory_are_ambiguous)
{
    model_t m;
    write_six(&m);
    write_ok(tpath("d/model.safetensors"), &m, ST_F32, 0);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "holds both model.safetensors and model.safetensors.index.json");
    model_free(&m);
}

Test(ckpt, malformed_indexes)
{
    model_t m;
    write_six(&m);
    FILE *f = fopen(tpath("d/model.safetensors.index.json"), "w");
    fputs("{\"metadata\": {}}", f);
    fclose(f);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "weight_map");
    f = fopen(tpath("d/model.safetensors.index.json"), "w");
    fputs("{\"weight_map\": {\"a\": \"../x.safetensors\", \"b\": 3}", f);
    fclose(f);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "model.safetensors.index.json");
    f = fopen(tpath("d/model.safetensors.index.json"), "w");
    fputs("{\"weight_map\": {\"a\": \"../x.safetensors\", \"b\": 3}}", f);
    fclose(f);
    cr_assert_eq(open_bad(tpath("d")), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "tensor 'a' the shard \"../x.safetensors\", which is not a file");
    assert_has(moemu_errmsg(), "tensor 'b' the shard 3");
    model_free(&m);
}

/* ---- ckpt_read_all: the model against the checkpoint */

Test(ckpt, read_all_reports_missing_unexpected_and_misshapen_at_once)
{
    model_t m;
    model_make(&m, 4, false);
    m.ts[3].shape[0] = 60; /* gate.weight written [60, 8]... */
    float *big = calloc(60 * 8, sizeof(float));
    m.ts[3].data = big;
    m.ts[4].name = "model.extra.weight"; /* ...norm.weight not written, an extra one is */
    write_ok(tpath("d"), &m, ST_F32, 700); /* 512+32 | 768 | 1920 | 32+512 */
    ckpt_t *ck = open_ok(tpath("d"));
    cr_assert_eq(ckpt_read_all(ck, m.want, NT, "tiny-moe"), MOEMU_ERR_FORMAT);
    const char *msg = moemu_errmsg();
    assert_has(msg, "tiny-moe: the checkpoint");
    assert_has(msg, "(3 problems):\n  ");
    assert_has(msg, "\n  in model-00003-of-00004.safetensors: model.layers.0.mlp.gate.weight has "
                    "shape [60, 8], expected [4, 8]");
    assert_has(msg, "\n  1 tensor missing: 'model.norm.weight'");
    assert_has(msg, "\n  1 tensor the model does not have: 'model.extra.weight' (in "
                    "model-00004-of-00004.safetensors)");
    ckpt_close(ck);
    free(big);
    model_free(&m);
}

Test(ckpt, read_all_names_a_few_missing_and_counts_the_rest)
{
    model_t m;
    model_make(&m, 4, false);
    write_ok(tpath("d"), &m, ST_F32, 1 << 20); /* a directory: d/model.safetensors */
    ckpt_t *ck = open_ok(tpath("d"));
    enum { NW = NT + 7 };
    ckpt_want_t want[NW];
    char names[7][32];
    memcpy(want, m.want, sizeof m.want);
    static const int64_t one[1] = {1};
    float dummy;
    for (int i = 0; i < 7; i++) {
        snprintf(names[i], sizeof names[i], "layers.%d.w", i);
        want[NT + i] = (ckpt_want_t){names[i], 1, one, &dummy};
    }
    cr_assert_eq(ckpt_read_all(ck, want, NW, "m"), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "7 tensors missing: 'layers.0.w', 'layers.1.w', 'layers.2.w', "
                               "'layers.3.w' and 3 more");
    ckpt_close(ck);
    model_free(&m);
}

Test(ckpt, read_all_refuses_other_dtypes_and_non_finite_values)
{
    model_t m;
    model_make(&m, 4, false);
    m.data[1][2] = NAN;
    m.data[1][5] = INFINITY;
    m.data[2][0] = -INFINITY;
    write_ok(tpath("d"), &m, ST_F32, 1 << 20); /* a directory: d/model.safetensors */
    int32_t ids[8] = {0};
    st_write_tensor_t it = {.name = "ids", .ndim = 1, .shape = {8}, .data = (const float *)ids};
    cr_assert_eq(st_write(tpath("ids.safetensors"), &it, 1, ST_I32), MOEMU_OK);

    ckpt_t *ck = open_ok(tpath("d"));
    cr_assert_eq(ckpt_read_all(ck, m.want, NT, "m"), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "2 tensors hold NaN or Inf values: "
                               "'model.layers.0.input_layernorm.weight' (2 of 8, in "
                               "model.safetensors), 'model.layers.0.mlp.experts.w1' (1 of 192");
    ckpt_close(ck);

    ck = open_ok(tpath("ids.safetensors"));
    static const int64_t eight[1] = {8};
    float out[8];
    ckpt_want_t w = {"ids", 1, eight, out};
    cr_assert_eq(ckpt_read_all(ck, &w, 1, "m"), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "in ids.safetensors: ids has dtype I32");
    ckpt_close(ck);
    model_free(&m);
}

Test(ckpt, read_all_refuses_a_name_wanted_twice)
{
    model_t m;
    model_make(&m, 4, false);
    write_ok(tpath("d"), &m, ST_F32, 1 << 20);
    ckpt_t *ck = open_ok(tpath("d"));
    m.want[5].name = m.want[0].name;
    cr_assert_eq(ckpt_read_all(ck, m.want, NT, "m"), MOEMU_ERR_INVALID);
    assert_has(moemu_errmsg(), "'model.embed_tokens.weight' is wanted twice");
    ckpt_close(ck);
    model_free(&m);
}

/* ---- FP8 checkpoints: F8_E4M3 weights with "_scale_inv" block scales */

/* A tensor to write as dtype, its values kept (data points into vals). */
typedef struct {
    st_write_tensor_t t;
    st_dtype_t dt;
    float *vals;
} fp8_t;

static int64_t t_numel(const st_write_tensor_t *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

static fp8_t fp8_tensor(const char *name, st_dtype_t dt, int ndim, const int64_t *shape)
{
    fp8_t f = {.t = {.name = name, .ndim = ndim}, .dt = dt};
    memcpy(f.t.shape, shape, (size_t)ndim * sizeof *shape);
    f.vals = calloc((size_t)t_numel(&f.t) + 1, sizeof(float));
    f.t.data = f.vals;
    return f;
}

/* Values the format holds exactly: a random code (not NaN) decoded, or a
 * random scale, so the expected product needs no rounding model. */
static void fill_codes(fp8_t *f, unsigned seed)
{
    srand(seed);
    for (int64_t k = 0; k < t_numel(&f->t); k++) {
        unsigned b = (unsigned)rand() % 256;
        f->vals[k] = emu_e4m3_to_f32((uint8_t)((b & 0x7f) == 0x7f ? 0x38 : b));
    }
}

static void fill_scales(fp8_t *f, unsigned seed)
{
    srand(seed);
    for (int64_t k = 0; k < t_numel(&f->t); k++)
        f->vals[k] = ((float)rand() / (float)RAND_MAX + 0.01f) * 1e-3f;
}

static void write_fp8(const char *path, fp8_t *fs, int n)
{
    st_write_tensor_t ts[16];
    st_dtype_t dts[16];
    for (int i = 0; i < n; i++) {
        ts[i] = fs[i].t;
        dts[i] = fs[i].dt;
    }
    cr_assert_eq(st_write_dtypes(path, ts, n, dts), MOEMU_OK, "%s", moemu_errmsg());
}

static void fp8_free(fp8_t *fs, int n)
{
    for (int i = 0; i < n; i++) free(fs[i].vals);
}

/* w's values after dequantizing: code * scale of its block, per matrix. */
static void expect_dequant(const float *got, const fp8_t *w, const fp8_t *s, int br, int bc)
{
    int nd = w->t.ndim;
    int64_t R = w->t.shape[nd - 2], C = w->t.shape[nd - 1], SR = s->t.shape[nd - 2],
            SC = s->t.shape[nd - 1], mats = t_numel(&w->t) / (R * C);
    cr_assert_eq(SR, (R + br - 1) / br);
    cr_assert_eq(SC, (C + bc - 1) / bc);
    for (int64_t m = 0; m < mats; m++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) {
                int64_t k = (m * R + r) * C + c;
                float want = w->vals[k] * s->vals[(m * SR + r / br) * SC + c / bc];
                cr_assert(got[k] == want, "%s[%lld] = %a, expected %a", w->t.name,
                          (long long)k, got[k], want);
            }
}

/* [200, 130] in blocks of 128 (DeepSeek-V3's, the default): neither
 * dimension a multiple, so the last blocks are partial. */
Test(ckpt, fp8_dequantized_with_default_blocks)
{
    static const int64_t ws[2] = {200, 130}, ss[2] = {2, 2}, ns[1] = {8};
    fp8_t fs[3] = {fp8_tensor("model.layers.0.mlp.down_proj.weight", ST_F8_E4M3, 2, ws),
                   fp8_tensor("model.layers.0.mlp.down_proj.weight_scale_inv", ST_F32, 2, ss),
                   fp8_tensor("model.norm.weight", ST_BF16, 1, ns)};
    fill_codes(&fs[0], 1);
    fill_scales(&fs[1], 2);
    for (int k = 0; k < 8; k++) fs[2].vals[k] = (float)k;
    write_fp8(tpath("model.safetensors"), fs, 3);
    ckpt_t *ck = open_ok(tpath("model.safetensors"));
    float *w = calloc(200 * 130, sizeof(float)), norm[8];
    ckpt_want_t want[2] = {{fs[0].t.name, 2, ws, w}, {"model.norm.weight", 1, ns, norm}};
    ckpt_read_opts_t o = {0};
    cr_assert_eq(ckpt_read_all_opts(ck, want, 2, "ds", &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(o.fp8, 1);
    cr_expect_eq(o.ignored, 0);
    expect_dequant(w, &fs[0], &fs[1], 128, 128);
    cr_expect_eq(norm[7], 7.0f);
    cr_assert_eq(ckpt_read_all(ck, want, 2, "ds"), MOEMU_OK, "%s", moemu_errmsg()); /* 128 */
    expect_dequant(w, &fs[0], &fs[1], 128, 128);
    ckpt_close(ck);
    free(w);
    fp8_free(fs, 3);
}

/* Small blocks, unequal ones, BF16 scales, and stacked experts (the block
 * grid per matrix, the leading dimension kept). */
Test(ckpt, fp8_dequantized_with_small_blocks_and_stacked_experts)
{
    static const int64_t ws[2] = {200, 130}, ss[2] = {13, 5}, es[3] = {3, 40, 20},
                         ess[3] = {3, 3, 1};
    fp8_t fs[4] = {fp8_tensor("a.weight", ST_F8_E4M3, 2, ws),
                   fp8_tensor("a.weight_scale_inv", ST_BF16, 2, ss),
                   fp8_tensor("experts.w1", ST_F8_E4M3, 3, es),
                   fp8_tensor("experts.w1_scale_inv", ST_F32, 3, ess)};
    fill_codes(&fs[0], 3);
    fill_codes(&fs[2], 4);
    fill_scales(&fs[3], 6);
    for (int k = 0; k < 13 * 5; k++) fs[1].vals[k] = (float)(k % 7 + 1) / 64.0f; /* BF16-exact */
    write_fp8(tpath("m.safetensors"), fs, 4);
    ckpt_t *ck = open_ok(tpath("m.safetensors"));
    float *a = calloc(200 * 130, sizeof(float)), *e = calloc(3 * 40 * 20, sizeof(float));
    ckpt_want_t want[2] = {{"a.weight", 2, ws, a}, {"experts.w1", 3, es, e}};
    ckpt_read_opts_t o = {.block_r = 16, .block_c = 32};
    cr_assert_eq(ckpt_read_all_opts(ck, want, 2, "m", &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(o.fp8, 2);
    expect_dequant(a, &fs[0], &fs[1], 16, 32);
    expect_dequant(e, &fs[2], &fs[3], 16, 32);
    o.block_c = -1;
    cr_assert_eq(ckpt_read_all_opts(ck, want, 2, "m", &o), MOEMU_ERR_INVALID);
    assert_has(moemu_errmsg(), "[16, -1]");
    ckpt_close(ck);
    free(a);
    free(e);
    fp8_free(fs, 4);
}

/* Every FP8 problem in one message, across two shards, each line naming
 * the tensor, the file and the numbers. */
Test(ckpt, fp8_problems_reported_at_once)
{
    static const int64_t ws[2] = {200, 130}, bad[2] = {2, 1}, good[2] = {2, 2}, one[1] = {200},
                         small[2] = {20, 30}, unit[2] = {1, 1};
    const char *down = "model.layers.0.mlp.down_proj.weight",
               *up = "model.layers.0.mlp.up_proj.weight",
               *gate = "model.layers.0.mlp.gate_proj.weight", *nan = "model.layers.0.nan.weight",
               *vec = "model.layers.0.vec.weight", *ints = "model.layers.0.int.weight",
               *odd = "model.layers.0.odd.weight";
    fp8_t s1[8] = {fp8_tensor(down, ST_F8_E4M3, 2, ws), fp8_tensor(up, ST_F8_E4M3, 2, ws),
                   fp8_tensor("model.layers.0.mlp.up_proj.weight_scale_inv", ST_F32, 2, bad),
                   fp8_tensor(vec, ST_F8_E4M3, 1, one), fp8_tensor(ints, ST_F8_E4M3, 2, ws),
                   fp8_tensor("model.layers.0.int.weight_scale_inv", ST_I32, 2, good),
                   fp8_tensor(odd, ST_F8_E4M3, 2, small), /* its scales: not reported again */
                   fp8_tensor("model.layers.0.odd.weight_scale_inv", ST_F32, 2, unit)};
    fp8_t s2[5] = {fp8_tensor(gate, ST_BF16, 2, ws),
                   fp8_tensor("model.layers.0.mlp.gate_proj.weight_scale_inv", ST_F32, 2, good),
                   fp8_tensor(nan, ST_F8_E4M3, 2, ws),
                   fp8_tensor("model.layers.0.nan.weight_scale_inv", ST_F32, 2, good),
                   fp8_tensor("model.layers.9.gone.weight_scale_inv", ST_F32, 2, good)};
    fill_codes(&s2[2], 7);
    s2[2].vals[5] = NAN;                /* stored as 0x7f */
    s2[3].vals[0] = 1.0f;
    s2[3].vals[3] = INFINITY;           /* block [1, 1]: 72 x 2 values, 144 with the NaN */
    s2[2].vals[199 * 130 + 129] = 0.0f; /* 0 * Inf: NaN as well, one of the 144 */
    cr_assert_eq(mkdir(tpath("d"), 0755), 0);
    write_fp8(tpath("d/model-00001-of-00002.safetensors"), s1, 8);
    write_fp8(tpath("d/model-00002-of-00002.safetensors"), s2, 5);
    FILE *f = fopen(tpath("d/model.safetensors.index.json"), "w");
    fputs("{\"weight_map\": {", f);
    for (int i = 0; i < 8; i++)
        fprintf(f, "\"%s\": \"model-00001-of-00002.safetensors\", ", s1[i].t.name);
    for (int i = 0; i < 5; i++)
        fprintf(f, "\"%s\": \"model-00002-of-00002.safetensors\"%s", s2[i].t.name,
                i < 4 ? ", " : "}}");
    fclose(f);

    ckpt_t *ck = open_ok(tpath("d"));
    float *out[7];
    for (int i = 0; i < 7; i++) out[i] = calloc(200 * 130, sizeof(float));
    ckpt_want_t want[7] = {{down, 2, ws, out[0]}, {up, 2, ws, out[1]}, {gate, 2, ws, out[2]},
                           {nan, 2, ws, out[3]}, {vec, 1, one, out[4]}, {ints, 2, ws, out[5]},
                           {odd, 2, ws, out[6]}};
    ckpt_read_opts_t o = {0};
    cr_assert_eq(ckpt_read_all_opts(ck, want, 7, "ds", &o), MOEMU_ERR_FORMAT);
    const char *msg = moemu_errmsg();
    assert_has(msg, "(8 problems):\n");
    assert_has(msg, "\n  in model-00001-of-00002.safetensors: model.layers.0.int.weight_scale_inv "
                    "has dtype I32; scales must be F32, BF16 or F16");
    assert_has(msg, "\n  in model-00001-of-00002.safetensors: model.layers.0.odd.weight has "
                    "shape [20, 30], expected [200, 130]");
    assert_has(msg, "\n  model.layers.0.mlp.down_proj.weight is F8_E4M3 but "
                    "model.layers.0.mlp.down_proj.weight_scale_inv is missing (in "
                    "model-00001-of-00002.safetensors)");
    assert_has(msg, "\n  in model-00001-of-00002.safetensors: "
                    "model.layers.0.mlp.up_proj.weight_scale_inv has shape [2, 1], expected "
                    "[2, 2]: the scales of model.layers.0.mlp.up_proj.weight [200, 130] in "
                    "blocks of [128, 128]");
    assert_has(msg, "\n  in model-00001-of-00002.safetensors: model.layers.0.vec.weight is "
                    "F8_E4M3 of shape [200]; its block scales need 2 dimensions");
    assert_has(msg, "\n  in model-00002-of-00002.safetensors: "
                    "model.layers.0.mlp.gate_proj.weight_scale_inv scales "
                    "model.layers.0.mlp.gate_proj.weight, which is BF16, not F8_E4M3");
    assert_has(msg, "\n  1 tensor the model does not have: "
                    "'model.layers.9.gone.weight_scale_inv' (in model-00002-of-00002.safetensors)");
    assert_has(msg, "\n  1 tensor holds NaN or Inf values: 'model.layers.0.nan.weight' (145 of "
                    "26000, in model-00002-of-00002.safetensors)");
    cr_expect_eq(o.fp8, 1);
    ckpt_close(ck);
    for (int i = 0; i < 7; i++) free(out[i]);
    fp8_free(s1, 8);
    fp8_free(s2, 5);
}

static bool is_mtp(const char *name, void *arg)
{
    return strncmp(name, (const char *)arg, strlen(arg)) == 0;
}

/* DeepSeek-V3's multi-token-prediction layer, left out by a predicate and
 * counted; without it, those tensors are unexpected. A wanted tensor is
 * read even where the predicate would leave it out. */
Test(ckpt, ignore_predicate_leaves_out_and_counts)
{
    static const int64_t ws[2] = {20, 30}, ss[2] = {1, 1}, ns[1] = {30};
    fp8_t fs[5] = {fp8_tensor("model.layers.0.mlp.down_proj.weight", ST_F32, 2, ws),
                   fp8_tensor("model.layers.61.mlp.down_proj.weight", ST_F8_E4M3, 2, ws),
                   fp8_tensor("model.layers.61.mlp.down_proj.weight_scale_inv", ST_F32, 2, ss),
                   fp8_tensor("model.layers.61.enorm.weight", ST_BF16, 1, ns),
                   fp8_tensor("model.layers.61.hnorm.weight", ST_BF16, 1, ns)};
    write_fp8(tpath("model.safetensors"), fs, 5);
    ckpt_t *ck = open_ok(tpath("model.safetensors"));
    float w[600], h[30];
    ckpt_want_t want[2] = {{fs[0].t.name, 2, ws, w}, {fs[4].t.name, 1, ns, h}};
    cr_assert_eq(ckpt_read_all(ck, want, 1, "ds"), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "4 tensors the model does not have: "
                               "'model.layers.61.mlp.down_proj.weight' (in model.safetensors)");
    ckpt_read_opts_t o = {.ignore = is_mtp, .arg = (void *)"model.layers.61."};
    cr_assert_eq(ckpt_read_all_opts(ck, want, 1, "ds", &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(o.ignored, 4);
    cr_expect_eq(o.ignored_bytes, 600 + 4 + 60 + 60);
    cr_expect_eq(o.fp8, 0);
    cr_assert_eq(ckpt_read_all_opts(ck, want, 2, "ds", &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(o.ignored, 3);
    cr_expect_eq(o.ignored_bytes, 600 + 4 + 60);
    ckpt_close(ck);
    fp8_free(fs, 5);
}

/* ---- MXFP4 experts, as gpt-oss ships them */

/* A tiny gpt-oss: hidden 64 (gate_up's in: two blocks of 32) and
 * intermediate F (down's in), four experts, two layers. */
#define MX_JSON(F)                                                                         \
    "{\"model_type\":\"gpt_oss\",\"vocab_size\":40,\"hidden_size\":64,"                   \
    "\"intermediate_size\":" #F ",\"num_hidden_layers\":2,\"num_attention_heads\":4,"     \
    "\"num_key_value_heads\":2,\"head_dim\":16,\"num_local_experts\":4,"                  \
    "\"num_experts_per_tok\":2,\"sliding_window\":4,\"rope_scaling\":{\"rope_type\":"     \
    "\"yarn\",\"factor\":4.0,\"original_max_position_embeddings\":16,\"truncate\":false}," \
    "\"max_position_embeddings\":64,\"torch_dtype\":\"bfloat16\"}"

/* e2m1 by code, as transformers' FP4_VALUES lists them. */
static const float fp4_values[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* X [E, in, out] as MXFP4: blocks [E, out, in/32, 16] of random codes,
 * scales [E, out, in/32] in 120..130, and X's values computed element by
 * element: value i of row (e, o) is the code in nibble i % 2 (low first)
 * of byte (i % 32) / 2 of block i / 32, times 2^(scale - 127). */
typedef struct {
    const char *name;
    int64_t E, in, out;
    uint8_t *blocks, *scales;
    float *want;
} mx_t;

static mx_t mx_make(const char *name, int64_t E, int64_t in, int64_t out, unsigned seed)
{
    mx_t m = {name, E, in, out, NULL, NULL, NULL};
    int64_t G = in / 32, rows = E * out * G;
    m.blocks = malloc((size_t)rows * 16);
    m.scales = malloc((size_t)rows);
    m.want = malloc((size_t)(E * in * out) * sizeof(float));
    srand(seed);
    for (int64_t k = 0; k < rows * 16; k++) m.blocks[k] = (uint8_t)(rand() % 256);
    for (int64_t k = 0; k < rows; k++) m.scales[k] = (uint8_t)(120 + rand() % 11);
    for (int64_t e = 0; e < E; e++)
        for (int64_t i = 0; i < in; i++)
            for (int64_t o = 0; o < out; o++) {
                int64_t row = (e * out + o) * G + i / 32;
                uint8_t byte = m.blocks[row * 16 + (i % 32) / 2];
                int code = i % 2 ? byte >> 4 : byte & 0x0F;
                m.want[(e * in + i) * out + o] =
                    (float)ldexp(fp4_values[code], (int)m.scales[row] - 127);
            }
    return m;
}

static void mx_free(mx_t *m)
{
    free(m->blocks);
    free(m->scales);
    free(m->want);
}

/* A checkpoint being put together: tensors, their dtypes and names. */
typedef struct {
    st_write_tensor_t ts[80];
    st_dtype_t dt[80];
    char names[80][160];
    int n;
} mxck_t;

static void mxck_add(mxck_t *c, const char *name, const char *suffix, int ndim,
                     const int64_t *shape, const void *data, st_dtype_t dt)
{
    cr_assert_lt(c->n, 80);
    snprintf(c->names[c->n], sizeof c->names[c->n], "%s%s", name, suffix);
    st_write_tensor_t *t = &c->ts[c->n];
    *t = (st_write_tensor_t){.name = c->names[c->n], .ndim = ndim, .data = data};
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    c->dt[c->n++] = dt;
}

/* m's blocks and scales, as the Hub names and shapes them. */
static void mxck_add_mx(mxck_t *c, const mx_t *m)
{
    int64_t bs[4] = {m->E, m->out, m->in / 32, 16}, ss[3] = {m->E, m->out, m->in / 32};
    mxck_add(c, m->name, "_blocks", 4, bs, m->blocks, ST_U8);
    mxck_add(c, m->name, "_scales", 3, ss, m->scales, ST_U8);
}

/* Every tensor of g in BF16 (the dtype they were generated in), except
 * those named in skip[0..nskip). */
static void mxck_add_plain(mxck_t *c, const wts_t *g, const char *const *skip, int nskip)
{
    for (int i = 0; i < wts_tensor_count(g); i++) {
        wts_tensor_t t;
        wts_tensor_at(g, i, &t);
        bool skipped = false;
        for (int k = 0; k < nskip; k++) skipped |= !strcmp(t.name, skip[k]);
        if (!skipped) mxck_add(c, t.name, "", t.ndim, t.shape, t.data, ST_BF16);
    }
}

static const char *const mx_gu0 = "model.layers.0.mlp.experts.gate_up_proj",
                         *mx_dn0 = "model.layers.0.mlp.experts.down_proj",
                         *mx_gu1 = "model.layers.1.mlp.experts.gate_up_proj",
                         *mx_dn1 = "model.layers.1.mlp.experts.down_proj";

/* gpt-oss's experts stored as the Hub ships them, three of the four
 * expert tensors as MXFP4 and the last plain, in shards: wts_load gives
 * each decoded value bit for bit (the sign of -0 included), and every
 * other tensor as written. */
Test(ckpt, mxfp4_experts_load_exactly)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_parse(&cfg, MX_JSON(64), "oss"), MOEMU_OK, "%s", moemu_errmsg());
    wts_t g, w;
    cr_assert_eq(wts_generate_all(&g, &cfg, 3), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_unpack(&g), MOEMU_OK, "%s", moemu_errmsg());
    mx_t mx[3] = {mx_make(mx_gu0, 4, 64, 128, 11), mx_make(mx_dn0, 4, 64, 64, 12),
                  mx_make(mx_gu1, 4, 64, 128, 13)};
    static mxck_t c;
    memset(&c, 0, sizeof c);
    const char *skip[3] = {mx_gu0, mx_dn0, mx_gu1};
    mxck_add_plain(&c, &g, skip, 3);
    for (int k = 0; k < 3; k++) mxck_add_mx(&c, &mx[k]);
    cr_assert_eq(ckpt_write_dtypes(tpath("oss"), c.ts, c.n, c.dt, 20000), MOEMU_OK, "%s",
                 moemu_errmsg());
    cr_assert(exists(tpath("oss/model.safetensors.index.json")));

    cr_assert_eq(wts_load(&w, &cfg, tpath("oss")), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_unpack(&w), MOEMU_OK, "%s", moemu_errmsg());
    int n = wts_tensor_count(&w), decoded = 0;
    cr_assert_eq(n, wts_tensor_count(&g));
    for (int i = 0; i < n; i++) {
        wts_tensor_t t, gt;
        wts_tensor_at(&w, i, &t);
        wts_tensor_at(&g, i, &gt);
        cr_assert_str_eq(t.name, gt.name);
        const float *want = gt.data;
        for (int k = 0; k < 3; k++)
            if (!strcmp(t.name, mx[k].name)) {
                want = mx[k].want;
                decoded++;
                cr_assert_eq(t.shape[0] * t.shape[1] * t.shape[2], 4 * 64 * mx[k].out);
            }
        size_t count = 1;
        for (int d = 0; d < t.ndim; d++) count *= (size_t)t.shape[d];
        cr_assert_eq(memcmp(t.data, want, count * sizeof(float)), 0, "%s differs", t.name);
    }
    cr_assert_eq(decoded, 3);

    /* the same read through ckpt_read_all_opts: the count of decoded tensors */
    size_t nt = n > 0 ? (size_t)n : 1;
    ckpt_want_t *want = calloc(nt, sizeof *want);
    wts_tensor_t *ts = calloc(nt, sizeof *ts);
    for (int i = 0; i < n; i++) {
        wts_tensor_at(&w, i, &ts[i]);
        want[i] = (ckpt_want_t){ts[i].name, ts[i].ndim, ts[i].shape, ts[i].data};
    }
    ckpt_t *ck = open_ok(tpath("oss"));
    ckpt_read_opts_t o = {0};
    cr_assert_eq(ckpt_read_all_opts(ck, want, n, "oss", &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(o.mxfp4, 3);
    cr_expect_eq(o.fp8, 0);
    cr_expect_eq(o.ignored, 0);
    ckpt_close(ck);
    free(want);
    free(ts);
    for (int k = 0; k < 3; k++) mx_free(&mx[k]);
    wts_free(&w);
    wts_free(&g);
}

/* Loading the boxes of EP rank 1 of tp2-ep2 (experts 2 and 3): of each
 * MXFP4 tensor only the matrices of those experts are decoded (their
 * blocks and scales read alone), of the plain ones their rows; the rest
 * stays 0. */
Test(ckpt, mxfp4_experts_load_boxes)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_parse(&cfg, MX_JSON(64), "oss"), MOEMU_OK, "%s", moemu_errmsg());
    wts_t g, w;
    cr_assert_eq(wts_generate_all(&g, &cfg, 3), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_unpack(&g), MOEMU_OK, "%s", moemu_errmsg());
    mx_t mx[2] = {mx_make(mx_gu1, 4, 64, 128, 21), mx_make(mx_dn1, 4, 64, 64, 22)};
    static mxck_t c;
    memset(&c, 0, sizeof c);
    const char *skip[2] = {mx_gu1, mx_dn1};
    mxck_add_plain(&c, &g, skip, 2);
    for (int k = 0; k < 2; k++) mxck_add_mx(&c, &mx[k]);
    cr_assert_eq(ckpt_write_dtypes(tpath("oss"), c.ts, c.n, c.dt, 0), MOEMU_OK, "%s",
                 moemu_errmsg());
    par_strategy_t s;
    cr_assert_eq(par_strategy_parse("tp2-ep2", &s), MOEMU_OK);
    wts_box_t *b = calloc((size_t)g.n_list, sizeof *b);
    int one = 1;
    wts_boxes_for(&g, &s, &one, 1, b);
    cr_assert_eq(wts_load_boxes(&w, &cfg, tpath("oss"), b), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_unpack(&w), MOEMU_OK, "%s", moemu_errmsg());
    int decoded = 0;
    for (int i = 0; i < w.n_list; i++) {
        const wts_tensor_t *t = &w.list[i];
        const float *want = g.list[i].data;
        for (int k = 0; k < 2; k++)
            if (!strcmp(t->name, mx[k].name)) want = mx[k].want, decoded++;
        int64_t C = wts_tensor_cols(t);
        for (int64_t r = 0; r < wts_tensor_rows(t); r++) {
            bool in = wts_box_elems(&b[i]) > 0 && r >= b[i].r0 && r < b[i].r1;
            for (int64_t k = 0; k < C; k++) {
                float x = in ? want[r * C + k] : 0.0f;
                if (memcmp(&t->data[r * C + k], &x, sizeof x))
                    cr_assert_fail("%s [%lld, %lld] is %g, expected %g", t->name, (long long)r,
                                   (long long)k, t->data[r * C + k], x);
            }
        }
    }
    cr_assert_eq(decoded, 2);
    int gu = -1;
    for (int i = 0; i < w.n_list; i++)
        if (!strcmp(w.list[i].name, mx_gu1)) gu = i;
    cr_assert(gu >= 0 && b[gu].r0 == 2 * 64 && b[gu].r1 == 4 * 64, "experts 2 and 3's rows");
    free(b);
    for (int k = 0; k < 2; k++) mx_free(&mx[k]);
    wts_free(&w);
    wts_free(&g);
}

/* Scales at the ends of e8m0: 255 makes 1.0 Inf (2^128) but keeps 0.5
 * finite (2^127); 0 gives subnormals, exact. The Inf are counted as the
 * NaN and Inf of any tensor are, named by the blocks. */
Test(ckpt, mxfp4_extreme_scales)
{
    uint8_t blocks[2 * 16], scales[2] = {255, 0};
    memset(blocks, 0x21, sizeof blocks); /* 0.5 (low nibble), 1.0 (high) */
    mxck_t *c = calloc(1, sizeof *c);
    static const int64_t bs[4] = {1, 2, 1, 16}, ss[3] = {1, 2, 1}, xs[3] = {1, 32, 2};
    mxck_add(c, "x", "_blocks", 4, bs, blocks, ST_U8);
    mxck_add(c, "x", "_scales", 3, ss, scales, ST_U8);
    cr_assert_eq(st_write_dtypes(tpath("m.safetensors"), c->ts, c->n, c->dt), MOEMU_OK, "%s",
                 moemu_errmsg());
    ckpt_t *ck = open_ok(tpath("m.safetensors"));
    float x[64];
    ckpt_want_t want = {"x", 3, xs, x};
    ckpt_read_opts_t o = {0};
    cr_assert_eq(ckpt_read_all_opts(ck, &want, 1, "e", &o), MOEMU_ERR_FORMAT);
    assert_has(moemu_errmsg(), "(1 problem):\n  1 tensor holds NaN or Inf values: 'x_blocks' "
                               "(16 of 64, in m.safetensors)");
    cr_expect_eq(o.mxfp4, 1);
    for (int i = 0; i < 32; i += 2) { /* x [0, i, o]: row o's value i */
        cr_expect(x[i * 2] == 0x1p127f, "x[0, %d, 0] = %a", i, x[i * 2]);
        cr_expect(isinf(x[(i + 1) * 2]) && x[(i + 1) * 2] > 0);
        cr_expect(x[i * 2 + 1] == 0x1p-128f, "x[0, %d, 1] = %a", i, x[i * 2 + 1]);
        cr_expect(x[(i + 1) * 2 + 1] == 0x1p-127f);
    }
    ckpt_close(ck);
    free(c);
}

/* Every MXFP4 problem in one message, each line naming the file, the
 * tensors and the numbers: blocks without scales, scales without blocks,
 * scales of the wrong shape and dtype, an in (intermediate 48) that is not
 * a multiple of 32. */
Test(ckpt, mxfp4_problems_reported_at_once)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_parse(&cfg, MX_JSON(48), "oss"), MOEMU_OK, "%s", moemu_errmsg());
    wts_t g, w;
    cr_assert_eq(wts_generate_all(&g, &cfg, 3), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_unpack(&g), MOEMU_OK, "%s", moemu_errmsg());
    static mxck_t c;
    memset(&c, 0, sizeof c);
    const char *skip[4] = {mx_gu0, mx_dn0, mx_gu1, mx_dn1};
    mxck_add_plain(&c, &g, skip, 4);
    float *zero = calloc(4 * 96 * 3 * 16, sizeof(float));
    static const int64_t gub[4] = {4, 96, 2, 16}, bad_gus[3] = {4, 96, 3},
                         dnb[4] = {4, 64, 1, 16}, dns[3] = {4, 64, 1};
    mxck_add(&c, mx_gu0, "_blocks", 4, gub, zero, ST_U8);
    mxck_add(&c, mx_dn0, "_blocks", 4, dnb, zero, ST_U8);
    mxck_add(&c, mx_dn0, "_scales", 3, dns, zero, ST_U8);
    mxck_add(&c, mx_gu1, "_blocks", 4, gub, zero, ST_U8);
    mxck_add(&c, mx_gu1, "_scales", 3, bad_gus, zero, ST_F32);
    mxck_add(&c, mx_dn1, "_scales", 3, dns, zero, ST_U8);
    cr_assert_eq(st_write_dtypes(tpath("bad.safetensors"), c.ts, c.n, c.dt), MOEMU_OK, "%s",
                 moemu_errmsg());

    cr_assert_eq(wts_load(&w, &cfg, tpath("bad.safetensors")), MOEMU_ERR_FORMAT);
    const char *msg = moemu_errmsg();
    assert_has(msg, "oss: the checkpoint ");
    assert_has(msg, "bad.safetensors does not fit the model (5 problems):\n");
    assert_has(msg, "\n  in bad.safetensors: model.layers.0.mlp.experts.gate_up_proj_blocks is "
                    "there but model.layers.0.mlp.experts.gate_up_proj_scales is not: MXFP4 "
                    "model.layers.0.mlp.experts.gate_up_proj needs both");
    assert_has(msg, "\n  in bad.safetensors: model.layers.0.mlp.experts.down_proj is stored as "
                    "MXFP4 (model.layers.0.mlp.experts.down_proj_blocks, "
                    "model.layers.0.mlp.experts.down_proj_scales) but has shape [4, 48, 64]: "
                    "its in, 48, is not a multiple of 32");
    assert_has(msg, "\n  in bad.safetensors: model.layers.1.mlp.experts.gate_up_proj_scales has "
                    "shape [4, 96, 3], expected [4, 96, 2]: the MXFP4 scales of "
                    "model.layers.1.mlp.experts.gate_up_proj [4, 64, 96]");
    assert_has(msg, "\n  in bad.safetensors: model.layers.1.mlp.experts.gate_up_proj_scales has "
                    "dtype F32; MXFP4 scales must be U8");
    assert_has(msg, "\n  in bad.safetensors: model.layers.1.mlp.experts.down_proj_scales is "
                    "there but model.layers.1.mlp.experts.down_proj_blocks is not: MXFP4 "
                    "model.layers.1.mlp.experts.down_proj needs both");
    cr_expect_null(strstr(msg, "missing"), "%s", msg);
    cr_expect_null(strstr(msg, "does not have"), "%s", msg);

    /* a wrong blocks shape, and both forms of one tensor: the pair unexpected */
    memset(&c, 0, sizeof c);
    const char *plain_dn1[3] = {mx_gu0, mx_dn0, mx_gu1};
    mxck_add_plain(&c, &g, plain_dn1, 3);
    static const int64_t bad_gub[4] = {4, 96, 2, 8}, gus[3] = {4, 96, 2};
    mxck_add(&c, mx_gu0, "_blocks", 4, bad_gub, zero, ST_U8);
    mxck_add(&c, mx_gu0, "_scales", 3, gus, zero, ST_U8);
    mxck_add(&c, mx_gu1, "_blocks", 4, gub, zero, ST_U8);
    mxck_add(&c, mx_gu1, "_scales", 3, gus, zero, ST_U8);
    mxck_add(&c, mx_dn1, "_blocks", 4, dnb, zero, ST_U8);
    mxck_add(&c, mx_dn1, "_scales", 3, dns, zero, ST_U8);
    cr_assert_eq(st_write_dtypes(tpath("bad2.safetensors"), c.ts, c.n, c.dt), MOEMU_OK, "%s",
                 moemu_errmsg());
    cr_assert_eq(wts_load(&w, &cfg, tpath("bad2.safetensors")), MOEMU_ERR_FORMAT);
    msg = moemu_errmsg();
    assert_has(msg, "(3 problems):\n");
    assert_has(msg, "\n  in bad2.safetensors: model.layers.0.mlp.experts.gate_up_proj_blocks has "
                    "shape [4, 96, 2, 8], expected [4, 96, 2, 16]: the MXFP4 blocks of "
                    "model.layers.0.mlp.experts.gate_up_proj [4, 64, 96]");
    assert_has(msg, "\n  1 tensor missing: 'model.layers.0.mlp.experts.down_proj'");
    assert_has(msg, "\n  2 tensors the model does not have: "
                    "'model.layers.1.mlp.experts.down_proj_blocks' (in bad2.safetensors), "
                    "'model.layers.1.mlp.experts.down_proj_scales' (in bad2.safetensors)");
    free(zero);
    wts_free(&g);
}

/* ---- the problems accumulator's lines */

Test(ckpt, problem_lines_escape_names_and_count_what_did_not_fit)
{
    moemu_problems_t p = {.lines = true};
    moemu_problem(&p, "bad name 'a\nb'");
    for (int i = 0; i < 200; i++) moemu_problem(&p, "problem %d with a fairly long text", i);
    moemu_fail_problems(MOEMU_ERR_FORMAT, &p, "head %s:", "x\ty");
    const char *msg = moemu_errmsg();
    assert_has(msg, "head x\\x09y:\n  bad name 'a\\x0ab'\n  problem 0 with");
    assert_has(msg, "more not shown)");
    cr_assert_lt(strlen(msg), sizeof p.buf);
    moemu_problems_t q = {0};
    moemu_problem(&q, "one");
    moemu_problem(&q, "two");
    moemu_fail_problems(MOEMU_ERR_INVALID, &q, "h");
    cr_assert_str_eq(moemu_errmsg(), "h: one; two");
}

/* ---- sizes */

Test(ckpt, parse_size_as_max_shard_size)
{
    static const struct {
        const char *s;
        int64_t v;
    } ok[] = {
        {"5GB", 5000000000LL},  {"500MB", 500000000LL}, {"2GiB", 2LL << 30},
        {"1000000", 1000000},   {"10 KB", 10000},       {"3kib", 3072},
        {"7mb", -1},            {"1B", 1},              {"0", 0},
        {"1TiB", 1LL << 40},    {"5gB", 5000000000LL},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t v = -2;
        moemu_status_t st = ckpt_parse_size(ok[i].s, &v);
        if (ok[i].v < 0) {
            cr_assert_eq(st, MOEMU_ERR_INVALID, "%s", ok[i].s);
            assert_has(moemu_errmsg(), "bits");
            assert_has(moemu_errmsg(), "write 7MB");
            continue;
        }
        cr_assert_eq(st, MOEMU_OK, "%s: %s", ok[i].s, moemu_errmsg());
        cr_assert_eq(v, ok[i].v, "%s gave %lld", ok[i].s, (long long)v);
    }
    static const char *const bad[] = {"", "GB", "-5GB", "1.5GB", "5XB", "5 GB extra",
                                      "99999999999999999999", "9000000000TB", " 5GB"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = 0;
        cr_assert_eq(ckpt_parse_size(bad[i], &v), MOEMU_ERR_INVALID, "'%s' accepted", bad[i]);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
        assert_has(moemu_errmsg(), quoted);
    }
}
