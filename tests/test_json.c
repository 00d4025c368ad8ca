/* emu_json: the getters every loader reads its JSON with, and the exact
 * wording of their messages. */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "emu/emu.h"

static json_t *load(const char *text)
{
    const emu_json_src_t src = {.origin = "t.json"};
    json_t *root;
    cr_assert_eq(emu_json_load_text(&src, text, &root), MOEMU_OK, "%s", moemu_errmsg());
    return root;
}

#define ASSERT_MSG(want) cr_assert_str_eq(moemu_errmsg(), want)

Test(json, integers)
{
    json_t *o = load("{\"a\": 4, \"r\": 4096.0, \"h\": 2.5, \"s\": \"2\", \"n\": null}");
    const emu_json_src_t src = {.origin = "t.json", .noun = "config key"};
    int x = 7;
    cr_assert_eq(emu_json_int(&src, o, "a", 0, 1, 8, &x), MOEMU_OK);
    cr_assert_eq(x, 4);
    cr_assert_eq(emu_json_int(&src, o, "a", 0, 5, 8, &x), MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 'a' = 4 is out of range (at least 5)");
    cr_assert_eq(emu_json_int(&src, o, "a", 0, 0, 3, &x), MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 'a' = 4 is out of range (at most 3)");
    cr_assert_eq(emu_json_int(&src, o, "r", 0, 0, INT_MAX, &x), MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 'r' must be an integer, got 4096.0");
    cr_assert_eq(emu_json_int(&src, o, "r", EMU_JSON_WHOLE_REAL, 0, INT_MAX, &x), MOEMU_OK);
    cr_assert_eq(x, 4096);
    cr_assert_eq(emu_json_int(&src, o, "r", EMU_JSON_WHOLE_REAL, 0, 100, &x), MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 'r' = 4096.0 is out of range (at most 100)");
    cr_assert_eq(emu_json_int(&src, o, "h", EMU_JSON_WHOLE_REAL, 0, 9, &x), MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 'h' must be an integer, got 2.5");
    cr_assert_eq(emu_json_int(&src, o, "s", 0, 0, 9, &x), MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 's' must be an integer, got \"2\"");
    /* absent, or null when nullable: the default stays */
    x = 7;
    cr_assert_eq(emu_json_int(&src, o, "missing", 0, 0, 9, &x), MOEMU_OK);
    cr_assert_eq(emu_json_int(&src, o, "n", EMU_JSON_NULLABLE, 0, 9, &x), MOEMU_OK);
    cr_assert_eq(x, 7);
    cr_assert_eq(emu_json_int(&src, o, "n", 0, 0, 9, &x), MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 'n' must be an integer, got null");
    cr_assert_eq(emu_json_int(&src, o, "missing", EMU_JSON_REQUIRED, 0, 9, &x),
                 MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 'missing' is required but missing");
    int64_t big = 0;
    json_object_set_new(o, "big", json_integer(INT64_MAX));
    cr_assert_eq(emu_json_i64(&src, o, "big", 0, 0, INT64_MAX, &big), MOEMU_OK);
    cr_assert_eq(big, INT64_MAX);
    /* a whole real of 2^63 passes "<= (double)INT64_MAX" but fits no
     * int64_t: an index's total_size of 9223372036854775808.0 was a
     * float-to-integer overflow (UBSan, tests/fuzz/fuzz_index.c) */
    json_object_set_new(o, "r63", json_real(0x1p63));
    cr_assert_eq(emu_json_i64(&src, o, "r63", EMU_JSON_WHOLE_REAL, 0, INT64_MAX, &big),
                 MOEMU_ERR_INVALID);
    ASSERT_MSG("t.json: config key 'r63' = 9.223372036854776e+18 is out of range (at most "
               "9223372036854775807)");
    json_object_set_new(o, "r62", json_real(0x1p62));
    cr_assert_eq(emu_json_i64(&src, o, "r62", EMU_JSON_WHOLE_REAL, 0, INT64_MAX, &big), MOEMU_OK);
    cr_assert_eq(big, (int64_t)1 << 62);
    json_decref(o);
}

Test(json, other_types_paths_and_status)
{
    json_t *o = load("{\"dev\": {\"bw\": \"fast\", \"on\": 1, \"name\": [1, 2]},"
                     " \"list\": [3, \"x\", -1]}");
    const emu_json_src_t src = {.origin = "hw.json", .status = MOEMU_ERR_FORMAT};
    json_t *dev = NULL, *list = NULL;
    cr_assert_eq(emu_json_obj(&src, o, "dev", EMU_JSON_REQUIRED, &dev), MOEMU_OK);
    char path[32];
    emu_json_src_t in = emu_json_in(&src, "dev", path, sizeof path);
    double d = 0;
    bool b = false;
    const char *s = NULL;
    cr_assert_eq(emu_json_num(&in, dev, "bw", 0, &d), MOEMU_ERR_FORMAT);
    ASSERT_MSG("hw.json: key 'dev.bw' must be a number, got \"fast\"");
    cr_assert_eq(emu_json_bool(&in, dev, "on", 0, &b), MOEMU_ERR_FORMAT);
    ASSERT_MSG("hw.json: key 'dev.on' must be a boolean (true or false), got 1");
    cr_assert_eq(emu_json_str(&in, dev, "name", 0, &s), MOEMU_ERR_FORMAT);
    ASSERT_MSG("hw.json: key 'dev.name' must be a string, got [1,2]");
    cr_assert_eq(emu_json_obj(&src, o, "list", 0, &list), MOEMU_ERR_FORMAT);
    ASSERT_MSG("hw.json: key 'list' must be an object, got [3,\"x\",-1]");
    cr_assert_eq(emu_json_arr(&src, o, "list", 0, &list), MOEMU_OK);
    emu_json_src_t at = emu_json_in(&src, "list", path, sizeof path);
    int x = 0;
    cr_assert_eq(emu_json_int_at(&at, list, 0, 0, 9, &x), MOEMU_OK);
    cr_assert_eq(x, 3);
    cr_assert_eq(emu_json_int_at(&at, list, 1, 0, 9, &x), MOEMU_ERR_FORMAT);
    ASSERT_MSG("hw.json: key 'list[1]' must be an integer, got \"x\"");
    cr_assert_eq(emu_json_int_at(&at, list, 2, 0, 9, &x), MOEMU_ERR_FORMAT);
    ASSERT_MSG("hw.json: key 'list[2]' = -1 is out of range (at least 0)");
    cr_assert_eq(emu_json_int_at(&at, list, 3, 0, 9, &x), MOEMU_ERR_FORMAT);
    ASSERT_MSG("hw.json: key 'list[3]' is required but missing");
    cr_assert_eq(emu_json_bad(&src, NULL, list, "must be an object"), MOEMU_ERR_FORMAT);
    ASSERT_MSG("hw.json: the top level must be an object, got [3,\"x\",-1]");
    json_decref(o);
}

Test(json, describe)
{
    char buf[96];
    json_t *v = json_real(1e-5);
    emu_json_describe(v, buf, sizeof buf);
    cr_assert_str_eq(buf, "1e-05");
    json_real_set(v, 50.0);
    emu_json_describe(v, buf, sizeof buf);
    cr_assert_str_eq(buf, "50.0");
    json_decref(v);
    v = json_string(
        "a long string of more than seventy characters, cut where the message would grow");
    emu_json_describe(v, buf, sizeof buf);
    cr_assert_eq(strlen(buf), 71, "%s", buf);
    cr_assert(strstr(buf, "...") == buf + 68, "%s", buf);
    json_decref(v);
}

Test(json, loading)
{
    const emu_json_src_t src = {.origin = "strategy JSON", .status = MOEMU_ERR_INVALID};
    json_t *root = NULL;
    cr_assert_eq(emu_json_load_text(&src, "{\"tp\": 2,\n \"ep\": }", &root), MOEMU_ERR_INVALID);
    cr_assert(!strncmp(moemu_errmsg(), "strategy JSON: malformed JSON at line 2, column ", 48),
              "%s", moemu_errmsg());
    const emu_json_src_t file = {.origin = "tokens file x.json"};
    cr_assert_eq(emu_json_load_text(&file, "{\"a\": 1, \"a\": 2}", &root), MOEMU_ERR_FORMAT);
    cr_assert(strstr(moemu_errmsg(), "duplicate"), "%s", moemu_errmsg());
    cr_assert_eq(emu_json_load_file(&file, "/nonexistent/x.json", &root), MOEMU_ERR_IO);
    cr_assert(!strncmp(moemu_errmsg(), "cannot open tokens file x.json: ", 32), "%s",
              moemu_errmsg());
    cr_assert_eq(emu_json_load_file(&file, "/tmp", &root), MOEMU_ERR_IO);
    ASSERT_MSG("cannot read tokens file x.json: it is a directory");
    char path[] = "/tmp/moemu-json-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "[1, 2]", 6), 6);
    close(fd);
    cr_assert_eq(emu_json_load_file(&file, path, &root), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(json_array_size(root), 2);
    json_decref(root);
    unlink(path);
}
