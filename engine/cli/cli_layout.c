/* moemu layout: check a parallel strategy against a model and a device
 * count, then show what each device holds and the groups it talks in. */
#include <stdlib.h>
#include <string.h>

#include "engine/cli/cli.h"
#include "engine/tools/outfile.h"
#include "parallel/par.h"

static const char layout_help[] =
    "usage: moemu layout --strategy S [OPTIONS]\n"
    "\n"
    "Check a parallel strategy against a model and a device count (every\n"
    "broken rule is reported with its numbers), then print the degrees, the\n"
    "nodes, one row per device (its coordinates, layers, query and kv heads,\n"
    "experts, slice of each expert, vocabulary rows, sequences and prompt\n"
    "positions) and every group. docs/strategies.md has the grammar, the\n"
    "rules and the layout formulas.\n"
    "\n";

static const cli_opt_t layout_options[] = {
    {.name = "strategy", .type = CLI_SHARED,
     .help = "e.g. dp2-tp2-ep4, EP8_TP2_PP1_DP1, 'dp4 pp4 ep16 sp',\n"
             "pp3=6/5/5-tp2, or JSON {\"tp\":2,\"ep\":4,\"sp\":true}"},
    CLI_USE("model"), CLI_USE("strict"),
    {.name = "devices", .type = CLI_SHARED, .help = "devices available (default: PP*DP*CP*TP)"},
    {.name = "pp-layers", .type = CLI_SHARED,
     .help = "layers per pipeline stage (an uneven split; replaces\none given in the strategy)"},
    {.name = "hw", .type = CLI_SHARED,
     .help = "hardware preset or JSON file, for the nodes (default\n" CLI_DEFAULT_HW ")"},
    CLI_USE("devices-per-node"),
    {.name = "nodes", .type = CLI_SHARED,
     .help = "nodes available (default: as many as the devices need)"},
    {.name = "batch", .type = CLI_SHARED, .help = "sequences to split over DP (default 1)"},
    {.name = "prompt-len", .type = CLI_SHARED, .help = "positions to split over CP (default 128)"},
    {.name = "json", .type = CLI_SHARED, .help = "the same data as JSON"},
    {.name = NULL},
};

typedef cli_shared_t layout_opts_t; /* batch and prompt_len: the positions laid out */

static moemu_status_t parse_opts(layout_opts_t *o, int argc, char **argv, bool *help)
{
    cli_shared_init(o);
    int first;
    MOEMU_CHECK(cli_parse("moemu layout", argc, argv, layout_options, o, NULL, help, &first));
    if (*help) return MOEMU_OK;
    MOEMU_CHECK(cli_no_operands("moemu layout", argc, argv, first));
    MOEMU_CHECK(cli_outputs_check(o, NULL, 0, NULL));
    if (!o->strategy)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu layout: --strategy is required (e.g. "
                                             "--strategy dp2-tp2-ep4; see moemu layout --help)");
    if (!o->wl.batch) o->wl.batch = 1;
    if (!o->wl.prompt_len) o->wl.prompt_len = 128;
    return MOEMU_OK;
}


/* The vocabulary padded for TP, as the vocabulary-parallel blocks hold it. */
static int vocab_padded(int V, int tp)
{
    int v0, v1;
    layer_vocab_rows(V, tp, 0, &v0, &v1);
    return (v1 - v0) * tp;
}

/* ---- the table: cells formatted first, columns sized to fit */

enum {
    COL_RANK, COL_NODE, COL_PP, COL_DP, COL_CP, COL_TP, COL_EDP, COL_EP, COL_ETP, COL_LAYERS,
    COL_HEADS, COL_KV, COL_EXPERTS, COL_FFN, COL_SHARED, COL_HOLDS, COL_VOCAB, COL_SEQS,
    COL_POS, COL__COUNT
};

static const char *const col_names[COL__COUNT] = {
    "rank", "node", "pp", "dp", "cp", "tp", "edp", "ep", "etp", "layers", "q heads",
    "kv heads", "experts", "expert ffn", "shared ffn", "holds", "vocab rows", "sequences",
    "positions"};

typedef char cell_t[48];

static void range_txt(cell_t c, int lo, int hi)
{
    if (lo >= hi) snprintf(c, sizeof(cell_t), "-");
    else snprintf(c, sizeof(cell_t), "[%d,%d)", lo, hi);
}

/* Everything the report shows, computed once for the text and the JSON. */
typedef struct {
    cfg_model_t cfg;
    par_dims_t dims;
    par_strategy_t s;
    char canon[PAR_STRATEGY_STRLEN];
    emu_hw_t hw;
    emu_topo_t topo;
    int world, edp, nodes;
    model_place_t *place; /* world */
    int *node;          /* world */
    int *group;         /* world: scratch for one group */
} layout_t;

static void place_cells(const layout_t *L, const layout_opts_t *o, int r, cell_t *c)
{
    const model_place_t *f = &L->place[r];
    const par_place_t *p = &f->par;
    const int ints[] = {p->rank, L->node[r], p->pp, p->dp, p->cp, p->tp, p->edp, p->ep, p->etp};
    for (int i = 0; i <= COL_ETP; i++) snprintf(c[i], sizeof(cell_t), "%d", ints[i]);
    range_txt(c[COL_LAYERS], p->layer0, p->layer1);
    range_txt(c[COL_HEADS], f->dims.head0, f->head1);
    range_txt(c[COL_KV], f->dims.kv_head0, f->kv_head1);
    if (f->kv_replicated) strcat(c[COL_KV], "*");
    range_txt(c[COL_EXPERTS], p->expert0, p->expert1);
    range_txt(c[COL_FFN], p->ffn0, p->ffn1);
    range_txt(c[COL_SHARED], f->shared_ffn0, f->shared_ffn1);
    snprintf(c[COL_HOLDS], sizeof(cell_t), "%s",
             p->has_embed && p->has_lm_head ? "embed,lm_head"
             : p->has_embed                 ? "embed"
             : p->has_lm_head               ? "lm_head"
                                            : "-");
    if (p->has_embed || p->has_lm_head) range_txt(c[COL_VOCAB], f->dims.vocab0, f->vocab1);
    else snprintf(c[COL_VOCAB], sizeof(cell_t), "-");
    int s0, s1, pos[2][2];
    par_split(o->wl.batch, L->s.dp, p->dp, &s0, &s1);
    range_txt(c[COL_SEQS], s0, s1);
    par_cp_ranges(o->wl.prompt_len, L->s.cp, p->cp, pos);
    range_txt(c[COL_POS], pos[0][0], pos[0][1]);
    if (pos[1][0] < pos[1][1]) {
        cell_t second;
        range_txt(second, pos[1][0], pos[1][1]);
        if (pos[0][0] < pos[0][1]) snprintf(c[COL_POS] + strlen(c[COL_POS]),
                                            sizeof(cell_t) - strlen(c[COL_POS]), "+%s", second);
        else snprintf(c[COL_POS], sizeof(cell_t), "%s", second);
    }
}

static moemu_status_t print_table(const layout_t *L, const layout_opts_t *o)
{
    cell_t *cells = malloc((size_t)L->world * COL__COUNT * sizeof(cell_t));
    if (!cells) return moemu_fail(MOEMU_ERR_NOMEM, "moemu layout: out of memory");
    bool show[COL__COUNT];
    for (int i = 0; i < COL__COUNT; i++) show[i] = true;
    show[COL_SHARED] = L->cfg.num_shared_experts > 0;
    int width[COL__COUNT];
    for (int i = 0; i < COL__COUNT; i++) width[i] = (int)strlen(col_names[i]);
    for (int r = 0; r < L->world; r++) {
        place_cells(L, o, r, cells + (size_t)r * COL__COUNT);
        for (int i = 0; i < COL__COUNT; i++) {
            int w = (int)strlen(cells[(size_t)r * COL__COUNT + i]);
            if (w > width[i]) width[i] = w;
        }
    }
    /* the header row first (r = -1); numbers right-aligned, ranges left */
    for (int r = -1; r < L->world; r++) {
        for (int i = 0; i < COL__COUNT; i++) {
            if (!show[i]) continue;
            const char *txt = r < 0 ? col_names[i] : cells[(size_t)r * COL__COUNT + i];
            if (i > 0) printf("  ");
            if (i == COL__COUNT - 1) printf("%s", txt);
            else if (i <= COL_ETP) printf("%*s", width[i], txt);
            else printf("%-*s", width[i], txt);
        }
        printf("\n");
    }
    free(cells);
    return MOEMU_OK;
}

/* Groups of kind g, each once (from its first member): count, size, and
 * how many span two nodes. */
static void group_stats(const layout_t *L, par_group_t g, int *count, int *size, int *crossing)
{
    *count = *size = *crossing = 0;
    for (int r = 0; r < L->world; r++) {
        int n = par_layout_group(&L->s, g, r, L->group);
        if (n == 0 || L->group[0] != r) continue;
        (*count)++;
        *size = n;
        if (emu_topo_group_link(&L->topo, L->group, n) == EMU_LINK_INTER) (*crossing)++;
    }
}

static void print_groups(const layout_t *L)
{
    printf("\n%-8s %6s %5s  %s\n", "group", "count", "size", "links");
    for (int g = 0; g < PAR_GROUP__COUNT; g++) {
        int count, size, crossing;
        group_stats(L, (par_group_t)g, &count, &size, &crossing);
        printf("%-8s %6d %5d  ", par_group_name((par_group_t)g), count, size);
        if (crossing == 0) printf("inside a node\n");
        else if (crossing == count) printf("across nodes (all %d)\n", count);
        else printf("across nodes (%d of %d)\n", crossing, count);
        if (g == PAR_GROUP_TP && crossing > 0)
            printf("         (TP groups stay inside a node only when the devices per node, "
                   "%d, are a multiple of TP=%d)\n", L->topo.devices_per_node, L->s.tp);
    }
    printf("\n");
    for (int g = 0; g < PAR_GROUP__COUNT; g++) {
        printf("%s groups:", par_group_name((par_group_t)g));
        for (int r = 0; r < L->world; r++) {
            int n = par_layout_group(&L->s, (par_group_t)g, r, L->group);
            if (n == 0 || L->group[0] != r) continue;
            printf(" {");
            for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", L->group[i]);
            printf("}");
        }
        printf("\n");
    }
}

static void print_summary(const layout_t *L, const layout_opts_t *o)
{
    const cfg_model_t *m = &L->cfg;
    const par_strategy_t *s = &L->s;
    printf("model %s: %d layers, %d query heads (%d kv), %d experts of %d", m->name,
           m->num_hidden_layers, m->num_attention_heads, m->num_key_value_heads,
           m->num_local_experts, m->intermediate_size);
    if (m->num_shared_experts > 0)
        printf(" + %d shared of %d", m->num_shared_experts, m->shared_expert_intermediate_size);
    printf(", vocab %d\n", m->vocab_size);
    printf("strategy %s: PP=%d DP=%d CP=%d TP=%d SP=%s; MoE layers EDP=%d EP=%d ETP=%d\n",
           L->canon, s->pp, s->dp, s->cp, s->tp, s->sp ? "on" : "off", L->edp, s->ep, s->etp);
    printf("devices %d = PP*DP*CP*TP = %d*%d*%d*%d; %s: %d per node, %d node%s\n", L->world,
           s->pp, s->dp, s->cp, s->tp, L->hw.name, L->topo.devices_per_node, L->nodes,
           L->nodes == 1 ? "" : "s");
    printf("stages:");
    for (int p = 0; p < s->pp; p++) {
        int l0, l1;
        par_stage_layers(s, m->num_hidden_layers, p, &l0, &l1);
        printf("%s %d: layers [%d,%d)", p ? "," : "", p, l0, l1);
    }
    printf("\n");
    if (m->num_key_value_heads % s->tp == 0)
        printf("kv heads: split, %d per TP rank\n", m->num_key_value_heads / s->tp);
    else
        printf("kv heads: replicated (*): TP=%d does not divide the %d kv heads; each rank "
               "keeps those its query heads read\n", s->tp, m->num_key_value_heads);
    int vp = vocab_padded(m->vocab_size, s->tp);
    if (vp == m->vocab_size)
        printf("vocab: %d rows, %d per TP rank\n", vp, vp / s->tp);
    else
        printf("vocab: %d rows padded to %d, %d per TP rank; rows >= %d are padding\n",
               m->vocab_size, vp, vp / s->tp, m->vocab_size);
    int chunk = (o->wl.prompt_len + 2 * s->cp - 1) / (2 * s->cp);
    printf("workload: %d sequence%s split over DP=%d, prompts of %d positions", o->wl.batch,
           o->wl.batch == 1 ? "" : "s", s->dp, o->wl.prompt_len);
    if (s->cp > 1) printf(" in 2*CP = %d chunks of %d (CP rank c: chunks c and %d-c)", 2 * s->cp,
                          chunk, 2 * s->cp - 1);
    printf("\n");
    if (s->sp)
        printf("SP: norms and residuals of T tokens on slices of ceil(T/%d) per TP rank\n", s->tp);
    printf("\n");
}

static json_t *range_json(int lo, int hi) { return json_pack("[i, i]", lo, hi); }

static moemu_status_t write_layout_json(const layout_t *L, const layout_opts_t *o)
{
    const par_strategy_t *s = &L->s;
    json_t *stages = json_array();
    for (int p = 0; p < s->pp; p++) {
        int l0, l1;
        par_stage_layers(s, L->cfg.num_hidden_layers, p, &l0, &l1);
        json_array_append_new(stages, range_json(l0, l1));
    }
    json_t *devices = json_array();
    for (int r = 0; r < L->world; r++) {
        const model_place_t *f = &L->place[r];
        const par_place_t *p = &f->par;
        int s0, s1, pos[2][2];
        par_split(o->wl.batch, s->dp, p->dp, &s0, &s1);
        par_cp_ranges(o->wl.prompt_len, s->cp, p->cp, pos);
        json_t *d = json_pack(
            "{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o, s:o, s:o, s:b, s:o, s:o, s:o,"
            " s:o, s:b, s:b, s:o, s:[o, o]}",
            "rank", r, "node", L->node[r], "pp", p->pp, "dp", p->dp, "cp", p->cp, "tp", p->tp,
            "edp", p->edp, "ep", p->ep, "etp", p->etp, "layers", range_json(p->layer0, p->layer1),
            "heads", range_json(f->dims.head0, f->head1), "kv_heads",
            range_json(f->dims.kv_head0, f->kv_head1), "kv_replicated", f->kv_replicated, "experts",
            range_json(p->expert0, p->expert1), "expert_ffn", range_json(p->ffn0, p->ffn1),
            "shared_ffn", range_json(f->shared_ffn0, f->shared_ffn1), "vocab_rows",
            range_json(f->dims.vocab0, f->vocab1), "embed", p->has_embed, "lm_head", p->has_lm_head,
            "sequences", range_json(s0, s1), "positions", range_json(pos[0][0], pos[0][1]),
            range_json(pos[1][0], pos[1][1]));
        json_array_append_new(devices, d);
    }
    json_t *groups = json_object();
    for (int g = 0; g < PAR_GROUP__COUNT; g++) {
        int count, size, crossing;
        group_stats(L, (par_group_t)g, &count, &size, &crossing);
        json_t *list = json_array();
        for (int r = 0; r < L->world; r++) {
            int n = par_layout_group(s, (par_group_t)g, r, L->group);
            if (n == 0 || L->group[0] != r) continue;
            json_t *one = json_array();
            for (int i = 0; i < n; i++) json_array_append_new(one, json_integer(L->group[i]));
            json_array_append_new(list, one);
        }
        json_object_set_new(groups, par_group_name((par_group_t)g),
                            json_pack("{s:i, s:i, s:i, s:o}", "size", size, "count", count,
                                      "crossing_nodes", crossing, "groups", list));
    }
    json_t *root = json_pack(
        "{s:s, s:s, s:{s:i, s:i, s:i, s:i, s:b, s:i, s:i, s:i}, s:o, s:i, s:{s:s, s:i, s:i},"
        " s:i, s:i, s:i, s:b, s:o, s:o}",
        "model", L->cfg.name, "strategy", L->canon, "degrees", "pp", s->pp, "dp", s->dp, "cp",
        s->cp, "tp", s->tp, "sp", s->sp, "ep", s->ep, "etp", s->etp, "edp", L->edp, "stages",
        stages, "devices", L->world, "hw", "name", L->hw.name, "devices_per_node",
        L->topo.devices_per_node, "nodes", L->nodes, "vocab_padded",
        vocab_padded(L->cfg.vocab_size, s->tp), "batch", o->wl.batch, "prompt_len",
        o->wl.prompt_len, "kv_replicated", L->cfg.num_key_value_heads % s->tp != 0, "ranks",
        devices, "groups", groups);
    if (!root) return moemu_fail(MOEMU_ERR_NOMEM, "moemu layout: cannot build the JSON");
    moemu_status_t st = outfile_json(o->json, root);
    json_decref(root);
    return st;
}

static moemu_status_t layout_build(layout_t *L, const layout_opts_t *o)
{
    MOEMU_CHECK(cli_load_model(&L->cfg, o));
    family_of(&L->cfg)->dims(&L->cfg, &L->dims);
    MOEMU_CHECK(par_strategy_parse(o->strategy, &L->s));
    if (o->pp_layers) MOEMU_CHECK(par_strategy_set_pp_layers(&L->s, o->pp_layers));
    int devices = o->devices ? o->devices : par_strategy_world(&L->s);
    MOEMU_CHECK(par_strategy_validate(&L->s, &L->dims, devices));
    par_strategy_format(&L->s, L->canon, sizeof L->canon);
    L->world = devices;
    L->edp = par_strategy_edp(&L->s);

    MOEMU_CHECK(cli_load_hw(o, devices, &L->hw, &L->nodes));
    L->topo = L->hw.topo;

    L->place = calloc((size_t)devices, sizeof *L->place);
    L->node = calloc((size_t)devices, sizeof *L->node);
    L->group = calloc((size_t)devices, sizeof *L->group);
    if (!L->place || !L->node || !L->group)
        return moemu_fail(MOEMU_ERR_NOMEM, "moemu layout: out of memory for %d devices", devices);
    for (int r = 0; r < devices; r++) {
        family_of(&L->cfg)->place(&L->cfg, &L->s, r, &L->place[r]);
        L->node[r] = emu_topo_node(&L->topo, r);
    }
    return MOEMU_OK;
}

int cli_layout_main(int argc, char **argv)
{
    layout_opts_t o;
    bool help = false;
    if (parse_opts(&o, argc, argv, &help) != MOEMU_OK) return cli_error();
    if (help) {
        fputs(layout_help, stdout);
        cli_help(stdout, layout_options);
        return CLI_EXIT_OK;
    }
    layout_t L = {0};
    int rc = CLI_EXIT_OK;
    if (layout_build(&L, &o) != MOEMU_OK) {
        rc = cli_error();
        goto done;
    }
    print_summary(&L, &o);
    if (print_table(&L, &o) != MOEMU_OK) {
        rc = cli_error();
        goto done;
    }
    print_groups(&L);
    if (o.json && write_layout_json(&L, &o) != MOEMU_OK) rc = cli_error();
done:
    free(L.place);
    free(L.node);
    free(L.group);
    return rc;
}
