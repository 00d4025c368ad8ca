/* json_same A B [IGNORED...]: exit 0 when the JSON files A and B hold the
 * same values, bit for bit for every number, else print the first path
 * that differs and exit 1 (2 when a file cannot be read). IGNORED are
 * object keys, as dotted paths from the root ("report.scaling"), that are
 * left out of the comparison. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

static const char *const *ignored;
static int n_ignored;

static int is_ignored(const char *path)
{
    for (int i = 0; i < n_ignored; i++)
        if (strcmp(path, ignored[i]) == 0) return 1;
    return 0;
}

static int same(const json_t *a, const json_t *b, char *path, size_t len)
{
    if (json_typeof(a) != json_typeof(b)) {
        printf("%s: a %s, then a %s\n", path, a && json_is_number(a) ? "number" : "value",
               b && json_is_number(b) ? "number" : "value");
        return 0;
    }
    size_t n = strlen(path);
    if (json_is_object(a)) {
        const char *key;
        const json_t *va;
        json_object_foreach((json_t *)a, key, va) {
            snprintf(path + n, len - n, "%s%s", n ? "." : "", key);
            if (is_ignored(path)) continue;
            const json_t *vb = json_object_get(b, key);
            if (!vb) {
                printf("%s: missing in the second file\n", path);
                return 0;
            }
            if (!same(va, vb, path, len)) return 0;
        }
        json_object_foreach((json_t *)b, key, va) {
            snprintf(path + n, len - n, "%s%s", n ? "." : "", key);
            if (!is_ignored(path) && !json_object_get(a, key)) {
                printf("%s: missing in the first file\n", path);
                return 0;
            }
        }
    } else if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b)) {
            printf("%s: %zu elements, then %zu\n", path, json_array_size(a), json_array_size(b));
            return 0;
        }
        for (size_t i = 0; i < json_array_size(a); i++) {
            snprintf(path + n, len - n, "[%zu]", i);
            if (!same(json_array_get(a, i), json_array_get(b, i), path, len)) return 0;
        }
    } else if (json_is_number(a)) {
        double x = json_number_value(a), y = json_number_value(b);
        if (memcmp(&x, &y, sizeof x) != 0) {
            printf("%s: %.17g, then %.17g\n", path, x, y);
            return 0;
        }
    } else if (!json_equal((json_t *)a, (json_t *)b)) {
        printf("%s differs\n", path);
        return 0;
    }
    path[n] = 0;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: json_same A B [IGNORED...]\n");
        return 2;
    }
    json_error_t e;
    json_t *a = json_load_file(argv[1], 0, &e), *b = a ? json_load_file(argv[2], 0, &e) : NULL;
    if (!a || !b) {
        fprintf(stderr, "json_same: %s: %s\n", e.source, e.text);
        return 2;
    }
    ignored = (const char *const *)argv + 3;
    n_ignored = argc - 3;
    char path[4096] = "";
    int ok = same(a, b, path, sizeof path);
    json_decref(a);
    json_decref(b);
    return ok ? 0 : 1;
}
