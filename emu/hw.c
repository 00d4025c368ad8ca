/* Hardware presets (JSON, built in or from a file) and the host as hwloc
 * sees it. */
#include <errno.h>
#include <hwloc.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "emu/emu_impl.h"

#ifndef MOEMU_DATADIR
#define MOEMU_DATADIR "/usr/local/share/moemu"
#endif

/* "comment": a string, or an array of strings joined by newlines. */
static moemu_status_t hw_comment(const emu_json_src_t *src, json_t *root, char *buf,
                                 size_t n)
{
    json_t *v = json_object_get(root, "comment");
    buf[0] = '\0';
    if (!v) return MOEMU_OK;
    if (json_is_string(v)) {
        snprintf(buf, n, "%s", json_string_value(v));
        return MOEMU_OK;
    }
    size_t i, used = 0;
    json_t *e;
    if (!json_is_array(v)) goto bad;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e)) goto bad;
        if (used < n)
            used += (size_t)snprintf(buf + used, n - used, "%s%s",
                                     i ? "\n" : "", json_string_value(e));
    }
    return MOEMU_OK;
bad:
    return emu_json_bad(src, "comment", v, "must be a string or an array of strings");
}

/* "row_tiles": 1 to EMU_ROW_TILES_MAX tile heights, ascending. */
static moemu_status_t hw_row_tiles(const emu_json_src_t *src, json_t *entry,
                                   emu_kernel_cost_t *kc)
{
    json_t *arr = NULL;
    char path[64];
    MOEMU_CHECK(emu_json_arr(src, entry, "row_tiles", 0, &arr));
    if (!arr) return MOEMU_OK;
    size_t n = json_array_size(arr);
    if (n < 1 || n > EMU_ROW_TILES_MAX)
        return emu_json_bad(src, "row_tiles", arr, "must hold 1 to %d tile heights",
                            EMU_ROW_TILES_MAX);
    emu_json_src_t in = emu_json_in(src, "row_tiles", path, sizeof path);
    for (size_t i = 0; i < n; i++) {
        MOEMU_CHECK(emu_json_int_at(&in, arr, i, 1, 4096, &kc->row_tiles[i]));
        if (i > 0 && kc->row_tiles[i] <= kc->row_tiles[i - 1])
            return emu_json_bad(src, "row_tiles", arr, "must be in ascending order");
    }
    kc->nrow_tiles = (int)n;
    return MOEMU_OK;
}

/* "kernels": {"<kind>": {"row_tiles", "col_tile", "overlap", "mfu"}},
 * every key optional; a kind named is set (overlap 1 unless given). */
static moemu_status_t hw_kernels(const emu_json_src_t *src, json_t *dev, emu_spec_t *s)
{
    json_t *kernels = NULL, *entry;
    const char *kind;
    char path[64], kpath[96];
    MOEMU_CHECK(emu_json_obj(src, dev, "kernels", 0, &kernels));
    if (!kernels) return MOEMU_OK;
    emu_json_src_t in = emu_json_in(src, "kernels", path, sizeof path);
    json_object_foreach(kernels, kind, entry) {
        int k = 0;
        while (k < EMU_KERNEL__COUNT && strcmp(kind, emu_kernel_name(k)) != 0) k++;
        if (k == EMU_KERNEL__COUNT) {
            char list[160] = "";
            for (int j = 0, used = 0; j < EMU_KERNEL__COUNT; j++)
                used += snprintf(list + used, sizeof list - (size_t)used, "%s%s", j ? ", " : "",
                                 emu_kernel_name(j));
            return emu_json_bad(&in, kind, NULL, "is not a kernel kind (%s)", list);
        }
        if (!json_is_object(entry)) return emu_json_bad(&in, kind, entry, "must be an object");
        emu_kernel_cost_t *kc = &s->kernels[k];
        emu_json_src_t ks = emu_json_in(&in, kind, kpath, sizeof kpath);
        *kc = (emu_kernel_cost_t){.set = true, .overlap = 1.0};
        MOEMU_CHECK(hw_row_tiles(&ks, entry, kc));
        MOEMU_CHECK(emu_json_int(&ks, entry, "col_tile", 0, 1, 4096, &kc->col_tile));
        MOEMU_CHECK(emu_json_num(&ks, entry, "overlap", 0, &kc->overlap));
        MOEMU_CHECK(emu_json_num(&ks, entry, "mfu", 0, &kc->mfu));
    }
    return MOEMU_OK;
}

static moemu_status_t hw_device(const emu_json_src_t *src, json_t *root, emu_spec_t *s)
{
    static const struct {
        const char *key;
        size_t off;
    } keys[] = {
        {"peak_flops", offsetof(emu_spec_t, peak_flops)},
        {"mfu", offsetof(emu_spec_t, mfu)},
        {"mem_bw", offsetof(emu_spec_t, mem_bw)},
        {"bw_util", offsetof(emu_spec_t, bw_util)},
        {"mem_capacity", offsetof(emu_spec_t, mem_capacity)},
        {"launch_s", offsetof(emu_spec_t, launch_s)},
    };
    json_t *dev;
    char path[16];
    MOEMU_CHECK(emu_json_obj(src, root, "device", EMU_JSON_REQUIRED, &dev));
    emu_json_src_t in = emu_json_in(src, "device", path, sizeof path);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        MOEMU_CHECK(emu_json_num(&in, dev, keys[i].key, EMU_JSON_REQUIRED,
                                 (double *)((char *)s + keys[i].off)));
    MOEMU_CHECK(emu_json_int(&in, dev, "units", 0, 1, 1 << 20, &s->units));
    MOEMU_CHECK(emu_json_num(&in, dev, "peak_flops_fp8", 0, &s->peak_flops_fp8));
    MOEMU_CHECK(emu_json_num(&in, dev, "host_seq_s", 0, &s->host_seq_s));
    return hw_kernels(&in, dev, s);
}

static moemu_status_t hw_topology(const emu_json_src_t *src, json_t *root, emu_topo_t *t)
{
    json_t *top;
    char path[16];
    MOEMU_CHECK(emu_json_obj(src, root, "topology", EMU_JSON_REQUIRED, &top));
    emu_json_src_t in = emu_json_in(src, "topology", path, sizeof path);
    MOEMU_CHECK(emu_json_int(&in, top, "devices_per_node", EMU_JSON_REQUIRED, 0, 1 << 20,
                             &t->devices_per_node));
    MOEMU_CHECK(emu_json_int(&in, top, "nodes", 0, 0, 1 << 20, &t->nodes));
    MOEMU_CHECK(emu_json_num(&in, top, "intra_bw", EMU_JSON_REQUIRED, &t->intra_bw));
    MOEMU_CHECK(emu_json_num(&in, top, "intra_lat", EMU_JSON_REQUIRED, &t->intra_lat));
    MOEMU_CHECK(emu_json_num(&in, top, "inter_bw", EMU_JSON_REQUIRED, &t->inter_bw));
    return emu_json_num(&in, top, "inter_lat", EMU_JSON_REQUIRED, &t->inter_lat);
}

static moemu_status_t hw_from_json(json_t *root, const emu_json_src_t *src,
                                   const char *default_name, emu_hw_t *out)
{
    if (!json_is_object(root))
        return emu_json_bad(src, NULL, root, "must be an object");
    memset(out, 0, sizeof *out);
    const char *name = default_name;
    MOEMU_CHECK(emu_json_str(src, root, "name", 0, &name));
    snprintf(out->name, sizeof out->name, "%s", name);
    MOEMU_CHECK(hw_comment(src, root, out->comment, sizeof out->comment));
    MOEMU_CHECK(hw_device(src, root, &out->spec));
    MOEMU_CHECK(hw_topology(src, root, &out->topo));
    /* impossible values are the file's fault */
    if (emu_spec_check(&out->spec, src->origin) || emu_topo_check(&out->topo, src->origin))
        return MOEMU_ERR_FORMAT;
    return emu_hw_plausible(out, src->origin);
}

moemu_status_t emu_hw_parse(const char *json, const char *origin,
                            emu_hw_t *out)
{
    emu_json_src_t src = {.origin = origin, .status = MOEMU_ERR_FORMAT};
    json_t *root;
    MOEMU_CHECK(emu_json_load_text(&src, json, &root));
    moemu_status_t st = hw_from_json(root, &src, "custom", out);
    json_decref(root);
    return st;
}

static moemu_status_t hw_load_file(const char *path, emu_hw_t *out)
{
    emu_json_src_t src = {.origin = path, .status = MOEMU_ERR_FORMAT};
    json_t *root;
    MOEMU_CHECK(emu_json_load_file(&src, path, &root));
    /* the file's name without folder and extension names it by default */
    char base[64];
    const char *b = strrchr(path, '/');
    snprintf(base, sizeof base, "%.63s", b ? b + 1 : path); /* cut as names are */
    char *dot = strstr(base, ".json");
    if (dot && dot[5] == '\0') *dot = '\0';
    moemu_status_t st = hw_from_json(root, &src, base, out);
    json_decref(root);
    return st;
}

int emu_hw_preset_count(void)
{
    int n = 0;
    while (emu_hw_presets[n].name) n++;
    return n;
}

const char *emu_hw_preset_name(int i)
{
    return i >= 0 && i < emu_hw_preset_count() ? emu_hw_presets[i].name : NULL;
}

/* Where arg's preset is: a file (its path into path), a built-in preset
 * (its text into *text) or nowhere (false). */
static bool hw_find(const char *arg, const char **text, char *path, size_t n)
{
    size_t len = strlen(arg);
    *text = NULL;
    if (strchr(arg, '/') || (len > 5 && strcmp(arg + len - 5, ".json") == 0)) {
        snprintf(path, n, "%s", arg);
        return true;
    }
    for (int i = 0; emu_hw_presets[i].name; i++)
        if (strcmp(arg, emu_hw_presets[i].name) == 0) {
            *text = emu_hw_presets[i].text;
            return true;
        }
    /* a preset added to the installed data folder */
    snprintf(path, n, "%s/hw/%s.json", MOEMU_DATADIR, arg);
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static moemu_status_t hw_unknown(const char *arg)
{
    char list[512] = "";
    size_t n = 0;
    for (int i = 0; emu_hw_presets[i].name && n < sizeof list; i++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "",
                              emu_hw_presets[i].name);
    return moemu_fail(MOEMU_ERR_INVALID,
                      "unknown hardware preset '%s' (built in: %s; or give "
                      "the path of a JSON file)",
                      arg, list);
}

moemu_status_t emu_hw_load(const char *arg, emu_hw_t *out)
{
    const char *text;
    char path[4096];
    if (!hw_find(arg, &text, path, sizeof path)) return hw_unknown(arg);
    if (!text) return hw_load_file(path, out);
    char origin[128];
    snprintf(origin, sizeof origin, "built-in preset hw/%s.json", arg);
    MOEMU_CHECK(emu_hw_parse(text, origin, out));
    snprintf(out->name, sizeof out->name, "%s", arg);
    return MOEMU_OK;
}

moemu_status_t emu_hw_json(const char *arg, json_t **out)
{
    emu_hw_t hw;
    MOEMU_CHECK(emu_hw_load(arg, &hw)); /* found, and valid */
    const char *text;
    char path[4096];
    hw_find(arg, &text, path, sizeof path);
    json_error_t je;
    *out = text ? json_loads(text, 0, &je) : json_load_file(path, 0, &je);
    if (!*out) return moemu_fail(MOEMU_ERR_IO, "%s: %s", text ? arg : path, je.text);
    return MOEMU_OK;
}

/* ---- engine profiles */

const char *emu_engine_name(int i)
{
    for (int k = 0; k <= i; k++)
        if (!emu_engine_profiles[k].name) return NULL;
    return emu_engine_profiles[i].name;
}

moemu_status_t emu_engine_json(const char *engine, json_t **out)
{
    json_error_t je;
    size_t len = strlen(engine);
    if (strchr(engine, '/') || (len > 5 && strcmp(engine + len - 5, ".json") == 0)) {
        *out = json_load_file(engine, JSON_REJECT_DUPLICATES, &je);
        if (!*out) return moemu_fail(MOEMU_ERR_FORMAT, "engine profile %s: %s (line %d)", engine,
                                     je.text, je.line);
        return MOEMU_OK;
    }
    char list[256] = "";
    size_t n = 0;
    for (int i = 0; emu_engine_profiles[i].name; i++) {
        if (strcmp(engine, emu_engine_profiles[i].name) == 0) {
            *out = json_loads(emu_engine_profiles[i].text, JSON_REJECT_DUPLICATES, &je);
            if (!*out) return moemu_fail(MOEMU_ERR_FORMAT, "engine profile %s: %s", engine, je.text);
            return MOEMU_OK;
        }
        if (n < sizeof list)
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "",
                                  emu_engine_profiles[i].name);
    }
    return moemu_fail(MOEMU_ERR_INVALID, "unknown engine profile '%s' (built in: %s; or give the "
                      "path of a JSON file)", engine, list);
}

/* The card entry e over hw's device. */
static moemu_status_t engine_card(const emu_json_src_t *src, json_t *e, emu_hw_t *hw)
{
    emu_spec_t s = hw->spec;
    double overlap = -1;
    MOEMU_CHECK(emu_json_num(src, e, "mfu", EMU_JSON_REQUIRED, &s.mfu));
    MOEMU_CHECK(emu_json_num(src, e, "bw_util", EMU_JSON_REQUIRED, &s.bw_util));
    MOEMU_CHECK(emu_json_num(src, e, "launch_s", EMU_JSON_REQUIRED, &s.launch_s));
    MOEMU_CHECK(emu_json_num(src, e, "host_seq_s", 0, &s.host_seq_s));
    MOEMU_CHECK(emu_json_num(src, e, "overlap", 0, &overlap));
    if (overlap != -1 && !(overlap >= 0 && overlap <= 1))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: %s.overlap must be in [0, 1] (got %g)",
                          src->origin, src->path, overlap);
    for (int k = 0; overlap != -1 && k < EMU_KERNEL__COUNT; k++)
        if (s.kernels[k].set) s.kernels[k].overlap = overlap;
    MOEMU_CHECK(emu_spec_check(&s, src->origin));
    hw->spec = s;
    return MOEMU_OK;
}

/* The profile's choices (optional: how the stack runs a strategy) over
 * hw's device. */
static moemu_status_t engine_stack(const char *origin, const json_t *root, emu_hw_t *hw)
{
    for (int i = 0; emu_stack_key(i); i++) {
        const char *key = emu_stack_key(i);
        json_t *o = json_object_get(root, key);
        char what[400];
        snprintf(what, sizeof what, "%s, key %s", origin, key);
        if (o) MOEMU_CHECK(emu_stack_set(&hw->spec.stack, key, json_string_value(o), what));
    }
    return MOEMU_OK;
}

moemu_status_t emu_engine_apply(const char *engine, emu_hw_t *hw, bool *found)
{
    json_t *root;
    *found = false;
    MOEMU_CHECK(emu_engine_json(engine, &root));
    char origin[320], path[96];
    snprintf(origin, sizeof origin, "engine profile %s", engine);
    snprintf(path, sizeof path, "cards.%s", hw->name);
    emu_json_src_t src = {.origin = origin, .noun = "profile key", .path = path};
    json_t *cards = json_object_get(root, "cards"), *e = json_object_get(cards, hw->name);
    moemu_status_t st = MOEMU_OK;
    if (!json_is_object(cards))
        st = moemu_fail(MOEMU_ERR_FORMAT, "%s: no object \"cards\"", origin);
    else if (e && !json_is_object(e))
        st = moemu_fail(MOEMU_ERR_FORMAT, "%s: %s must be an object", origin, path);
    else if (e && (st = engine_card(&src, e, hw)) == MOEMU_OK &&
             (st = engine_stack(origin, root, hw)) == MOEMU_OK) {
        *found = true;
        const char *pn = json_string_value(json_object_get(root, "name"));
        char name[sizeof hw->name];
        snprintf(name, sizeof name, "%.31s+%.31s", hw->name, pn ? pn : engine);
        memcpy(hw->name, name, sizeof name);
    }
    json_decref(root);
    return st;
}

moemu_status_t emu_host_query(emu_host_t *out)
{
    memset(out, 0, sizeof *out);
    hwloc_topology_t t;
    if (hwloc_topology_init(&t) != 0)
        return moemu_fail(MOEMU_ERR_INTERNAL, "hwloc cannot start");
    if (hwloc_topology_load(t) != 0) {
        hwloc_topology_destroy(t);
        return moemu_fail(MOEMU_ERR_INTERNAL,
                          "hwloc cannot read the host topology");
    }
    out->packages = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE);
    out->numa_nodes = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
    out->cores = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
    out->pus = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
    hwloc_obj_t pkg = hwloc_get_obj_by_type(t, HWLOC_OBJ_PACKAGE, 0);
    const char *model = pkg ? hwloc_obj_get_info_by_name(pkg, "CPUModel") : NULL;
    if (!model) {
        hwloc_obj_t root = hwloc_get_root_obj(t);
        model = hwloc_obj_get_info_by_name(root, "CPUModel");
    }
    snprintf(out->cpu_model, sizeof out->cpu_model, "%s", model ? model : "");
    hwloc_topology_destroy(t);
    return MOEMU_OK;
}
