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

static moemu_status_t hw_num(json_t *obj, const char *sect, const char *key,
                             const char *origin, double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return moemu_fail(MOEMU_ERR_FORMAT, "%s: %s.%s is missing", origin,
                          sect, key);
    if (!json_is_number(v))
        return moemu_fail(MOEMU_ERR_FORMAT, "%s: %s.%s must be a number",
                          origin, sect, key);
    *out = json_number_value(v);
    return MOEMU_OK;
}

static moemu_status_t hw_int(json_t *obj, const char *sect, const char *key,
                             const char *origin, bool required, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (!required) return MOEMU_OK;
        return moemu_fail(MOEMU_ERR_FORMAT, "%s: %s.%s is missing", origin,
                          sect, key);
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > 1 << 20)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: %s.%s must be a whole number from 0 to %d",
                          origin, sect, key, 1 << 20);
    *out = (int)json_integer_value(v);
    return MOEMU_OK;
}

static json_t *hw_section(json_t *root, const char *key, const char *origin,
                          moemu_status_t *st)
{
    json_t *o = json_object_get(root, key);
    if (!json_is_object(o))
        *st = moemu_fail(MOEMU_ERR_FORMAT, "%s: %s must be an object%s",
                         origin, key, o ? "" : " (it is missing)");
    return o;
}

/* "comment": a string, or an array of strings joined by newlines. */
static moemu_status_t hw_comment(json_t *v, const char *origin, char *buf,
                                 size_t n)
{
    buf[0] = '\0';
    if (!v) return MOEMU_OK;
    if (json_is_string(v)) {
        snprintf(buf, n, "%s", json_string_value(v));
        return MOEMU_OK;
    }
    if (!json_is_array(v)) goto bad;
    size_t i, used = 0;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e)) goto bad;
        if (used < n)
            used += (size_t)snprintf(buf + used, n - used, "%s%s",
                                     i ? "\n" : "", json_string_value(e));
    }
    return MOEMU_OK;
bad:
    return moemu_fail(MOEMU_ERR_FORMAT,
                      "%s: comment must be a string or an array of strings",
                      origin);
}

static moemu_status_t hw_from_json(json_t *root, const char *origin,
                                   const char *default_name, emu_hw_t *out)
{
    moemu_status_t st = MOEMU_OK;
    if (!json_is_object(root))
        return moemu_fail(MOEMU_ERR_FORMAT, "%s: the top level must be an "
                                            "object", origin);
    memset(out, 0, sizeof *out);
    json_t *name = json_object_get(root, "name");
    if (name && !json_is_string(name))
        return moemu_fail(MOEMU_ERR_FORMAT, "%s: name must be a string",
                          origin);
    snprintf(out->name, sizeof out->name, "%s",
             name ? json_string_value(name) : default_name);
    MOEMU_CHECK(hw_comment(json_object_get(root, "comment"), origin,
                           out->comment, sizeof out->comment));

    json_t *dev = hw_section(root, "device", origin, &st);
    MOEMU_CHECK(st);
    emu_spec_t *s = &out->spec;
    MOEMU_CHECK(hw_num(dev, "device", "peak_flops", origin, &s->peak_flops));
    MOEMU_CHECK(hw_num(dev, "device", "mfu", origin, &s->mfu));
    MOEMU_CHECK(hw_num(dev, "device", "mem_bw", origin, &s->mem_bw));
    MOEMU_CHECK(hw_num(dev, "device", "bw_util", origin, &s->bw_util));
    MOEMU_CHECK(hw_num(dev, "device", "mem_capacity", origin, &s->mem_capacity));
    MOEMU_CHECK(hw_num(dev, "device", "launch_s", origin, &s->launch_s));

    json_t *top = hw_section(root, "topology", origin, &st);
    MOEMU_CHECK(st);
    emu_topo_t *t = &out->topo;
    MOEMU_CHECK(hw_int(top, "topology", "devices_per_node", origin, true,
                       &t->devices_per_node));
    MOEMU_CHECK(hw_int(top, "topology", "nodes", origin, false, &t->nodes));
    MOEMU_CHECK(hw_num(top, "topology", "intra_bw", origin, &t->intra_bw));
    MOEMU_CHECK(hw_num(top, "topology", "intra_lat", origin, &t->intra_lat));
    MOEMU_CHECK(hw_num(top, "topology", "inter_bw", origin, &t->inter_bw));
    MOEMU_CHECK(hw_num(top, "topology", "inter_lat", origin, &t->inter_lat));

    /* impossible values are the file's fault */
    if (emu_spec_check(s, origin) || emu_topo_check(t, origin))
        return MOEMU_ERR_FORMAT;
    return MOEMU_OK;
}

moemu_status_t emu_hw_parse(const char *json, const char *origin,
                            emu_hw_t *out)
{
    json_error_t err;
    json_t *root = json_loads(json, 0, &err);
    if (!root)
        return moemu_fail(MOEMU_ERR_FORMAT, "%s:%d:%d: %s", origin, err.line,
                          err.column, err.text);
    moemu_status_t st = hw_from_json(root, origin, "custom", out);
    json_decref(root);
    return st;
}

static moemu_status_t hw_load_file(const char *path, emu_hw_t *out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moemu_fail(MOEMU_ERR_IO, "cannot open hardware file %s: %s",
                          path, strerror(errno));
    json_error_t err;
    json_t *root = json_loadf(f, 0, &err);
    fclose(f);
    if (!root)
        return moemu_fail(MOEMU_ERR_FORMAT, "%s:%d:%d: %s", path, err.line,
                          err.column, err.text);
    /* the file's name without folder and extension names it by default */
    char base[64];
    const char *b = strrchr(path, '/');
    snprintf(base, sizeof base, "%s", b ? b + 1 : path);
    char *dot = strstr(base, ".json");
    if (dot && dot[5] == '\0') *dot = '\0';
    moemu_status_t st = hw_from_json(root, path, base, out);
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

moemu_status_t emu_hw_load(const char *arg, emu_hw_t *out)
{
    size_t len = strlen(arg);
    if (strchr(arg, '/') || (len > 5 && strcmp(arg + len - 5, ".json") == 0))
        return hw_load_file(arg, out);
    for (int i = 0; emu_hw_presets[i].name; i++)
        if (strcmp(arg, emu_hw_presets[i].name) == 0) {
            char origin[128];
            snprintf(origin, sizeof origin, "built-in preset hw/%s.json", arg);
            MOEMU_CHECK(emu_hw_parse(emu_hw_presets[i].text, origin, out));
            snprintf(out->name, sizeof out->name, "%s", arg);
            return MOEMU_OK;
        }
    /* a preset added to the installed data folder */
    char path[4096];
    snprintf(path, sizeof path, "%s/hw/%s.json", MOEMU_DATADIR, arg);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        return hw_load_file(path, out);
    }
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
