/* Tests of parallel/strategy.c and parallel/layout.c: the string and JSON
 * grammars with each parse error, validation with its exact messages, the
 * canonical form, and the rank layout (coordinates, MoE folding, groups,
 * heads, kv heads, experts, vocabulary padding, CP, SP, DP and PP splits). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/family.h"
#include "parallel/par.h"

/* A built-in model's config, in a slot that outlives the test's use of it
 * (the family's rules read the config through par_dims_t). */
static cfg_model_t *cfg_of(const char *model)
{
    static cfg_model_t slots[16];
    static int next;
    cfg_model_t *m = &slots[next++ % 16];
    cr_assert_eq(cfg_load(m, model), MOEMU_OK, "%s", moemu_errmsg());
    return m;
}

static par_dims_t dims_for(const cfg_model_t *m)
{
    par_dims_t d;
    family_of(m)->dims(m, &d);
    return d;
}

static par_dims_t dims_of(const char *model) { return dims_for(cfg_of(model)); }

static model_place_t place_of(const cfg_model_t *m, const par_strategy_t *s, int rank)
{
    model_place_t p;
    family_of(m)->place(m, s, rank, &p);
    return p;
}

static par_strategy_t parse_ok(const char *text)
{
    par_strategy_t s;
    cr_assert_eq(par_strategy_parse(text, &s), MOEMU_OK, "'%s': %s", text, moemu_errmsg());
    return s;
}

static void assert_degrees(const par_strategy_t *s, int tp, int cp, int dp, int pp, int ep,
                           int etp, int edp, bool sp, const char *what)
{
    cr_assert(s->tp == tp && s->cp == cp && s->dp == dp && s->pp == pp && s->ep == ep &&
                  s->etp == etp && s->edp == edp && s->sp == sp,
              "%s: got tp%d cp%d dp%d pp%d ep%d etp%d edp%d sp%d", what, s->tp, s->cp, s->dp,
              s->pp, s->ep, s->etp, s->edp, s->sp);
}

/* ---- parsing */

Test(strategy_parse, design_and_issue_examples)
{
    par_strategy_t s = parse_ok("EP8_TP2_PP1_DP1");
    assert_degrees(&s, 2, 1, 1, 1, 8, 1, 0, false, "EP8_TP2_PP1_DP1");
    cr_assert_eq(s.n_pp_layers, 0);
    s = parse_ok("tp2-ep4-pp2");
    assert_degrees(&s, 2, 1, 1, 2, 4, 1, 0, false, "tp2-ep4-pp2");
    s = parse_ok("dp4 pp4 ep16 sp");
    assert_degrees(&s, 1, 1, 4, 4, 16, 1, 0, true, "dp4 pp4 ep16 sp");
    s = parse_ok("etp2");
    assert_degrees(&s, 1, 1, 1, 1, 1, 2, 0, false, "etp2");
    s = parse_ok("cp2");
    assert_degrees(&s, 1, 2, 1, 1, 1, 1, 0, false, "cp2");
    s = parse_ok("edp2");
    assert_degrees(&s, 1, 1, 1, 1, 1, 1, 2, false, "edp2");
    s = parse_ok("dp2-tp2-ep4");
    assert_degrees(&s, 2, 1, 2, 1, 4, 1, 0, false, "dp2-tp2-ep4");
    s = parse_ok("pp2-dp2-cp2-tp2-sp-ep4-etp2");
    assert_degrees(&s, 2, 2, 2, 2, 4, 2, 0, true, "all");
}

Test(strategy_parse, case_separators_and_blanks)
{
    par_strategy_t s = parse_ok("Tp2.eP4,Dp2_Cp2-ETP2 EDP1\tSp");
    assert_degrees(&s, 2, 2, 2, 1, 4, 2, 1, true, "mixed");
    s = parse_ok("  tp2--ep2__  ");
    assert_degrees(&s, 2, 1, 1, 1, 2, 1, 0, false, "doubled separators");
    s = parse_ok("TP4 SP");
    assert_degrees(&s, 4, 1, 1, 1, 1, 1, 0, true, "upper case");
}

Test(strategy_parse, sp_with_a_degree)
{
    par_strategy_t s = parse_ok("tp2-sp2");
    cr_assert(s.sp);
    s = parse_ok("tp4-SP4");
    cr_assert(s.sp);
    s = parse_ok("tp2-sp1");
    cr_assert_not(s.sp);
}

Test(strategy_parse, uneven_stage_split)
{
    par_strategy_t s = parse_ok("pp3=6/5/5-tp2");
    cr_assert_eq(s.pp, 3);
    cr_assert_eq(s.n_pp_layers, 3);
    cr_assert(s.pp_layers[0] == 6 && s.pp_layers[1] == 5 && s.pp_layers[2] == 5);
    cr_assert_eq(par_strategy_set_pp_layers(&s, "5,4,4,3"), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(s.n_pp_layers, 4);
    cr_assert(s.pp_layers[0] == 5 && s.pp_layers[1] == 4 && s.pp_layers[2] == 4 &&
              s.pp_layers[3] == 3);
    cr_assert_eq(par_strategy_set_pp_layers(&s, "8/8"), MOEMU_OK);
    cr_assert_eq(s.n_pp_layers, 2);
    cr_assert(s.pp_layers[0] == 8 && s.pp_layers[1] == 8);
}

Test(strategy_parse, json)
{
    par_strategy_t s =
        parse_ok("{\"tp\":2,\"ep\":4,\"sp\":true,\"pp\":4,\"pp_layers\":[5,4,4,3],\"dp\":1,"
                 "\"cp\":1,\"etp\":1,\"edp\":1}");
    assert_degrees(&s, 2, 1, 1, 4, 4, 1, 1, true, "json");
    cr_assert_eq(s.n_pp_layers, 4);
    cr_assert(s.pp_layers[0] == 5 && s.pp_layers[3] == 3);
    s = parse_ok("  { \"TP\": 2, \"Sp\": 2 }");
    assert_degrees(&s, 2, 1, 1, 1, 1, 1, 0, true, "json, keys in capitals, sp 2");
    s = parse_ok("{\"tp\":2,\"sp\":false,\"pp_layers\":null}");
    assert_degrees(&s, 2, 1, 1, 1, 1, 1, 0, false, "json, sp false");
    cr_assert_eq(s.n_pp_layers, 0);
    s = parse_ok("{}");
    assert_degrees(&s, 1, 1, 1, 1, 1, 1, 0, false, "json, empty object");
}

typedef struct {
    const char *text, *msg;
} bad_t;

static const bad_t bad_parses[] = {
    {"", "strategy '': empty (expected <dimension><degree> tokens such as tp2-ep4, or a JSON "
         "object)"},
    {" - _ ,", "strategy ' - _ ,': empty (expected <dimension><degree> tokens such as tp2-ep4, "
               "or a JSON object)"},
    {"tp2-xx4", "strategy 'tp2-xx4': unknown dimension 'xx' (expected tp, cp, dp, pp, ep, etp or "
                "edp with a degree, or the flag sp)"},
    {"tp2-ep4-mp2", "strategy 'tp2-ep4-mp2': unknown dimension 'mp' (expected tp, cp, dp, pp, "
                    "ep, etp or edp with a degree, or the flag sp)"},
    {"tp-ep4", "strategy 'tp-ep4': 'tp' lacks a degree (e.g. tp2)"},
    {"EP", "strategy 'EP': 'EP' lacks a degree (e.g. ep2)"},
    {"tp0", "strategy 'tp0': the degree of 'tp0' must be at least 1"},
    {"dp2-ep00", "strategy 'dp2-ep00': the degree of 'ep00' must be at least 1"},
    {"tp2x", "strategy 'tp2x': the degree of 'tp2x' is not a whole number"},
    {"tp+2", "strategy 'tp+2': the degree of 'tp+2' is not a whole number"},
    {"tp2-TP4", "strategy 'tp2-TP4': TP is given twice ('tp2' and 'TP4')"},
    {"sp tp2 SP", "strategy 'sp tp2 SP': SP is given twice ('sp' and 'SP')"},
    {"tp99999", "strategy 'tp99999': the degree of 'tp99999' is more than 32768"},
    {"4-tp2", "strategy '4-tp2': '4' is not <dimension><degree> such as tp2"},
    {"tp2=2", "strategy 'tp2=2': the degree of 'tp2=2' is not a whole number"},
    {"pp3=6/x/5", "strategy 'pp3=6/x/5': 'x' in the stage split is not a whole number in "
                  "[0, 1000000]"},
    {"pp2=", "strategy 'pp2=': the stage split is empty (expected e.g. 5,4,4,3)"},
    {"{\"tp\":\"2\"}", "strategy JSON: key 'tp' must be an integer, got \"2\""},
    {"{\"tp\":2.0}", "strategy JSON: key 'tp' must be an integer, got 2.0"},
    {"{\"tp\":0}", "strategy JSON: key 'tp' = 0 is out of range (at least 1)"},
    {"{\"tp\":99999}", "strategy JSON: key 'tp' = 99999 is out of range (at most 32768)"},
    {"{\"tp\":2,\"foo\":1}", "strategy JSON: key 'foo' is unknown (expected tp, cp, dp, pp, ep, "
                             "etp, edp, sp, pp_layers)"},
    {"{\"sp\":\"yes\"}", "strategy JSON: key 'sp' must be true, false or an integer, got "
                         "\"yes\""},
    {"{\"pp_layers\":5}", "strategy JSON: key 'pp_layers' must be an array, got 5"},
    {"{\"pp_layers\":[1,\"a\"]}", "strategy JSON: key 'pp_layers[1]' must be an integer, got "
                                  "\"a\""},
    {"{\"pp_layers\":[1,-1]}", "strategy JSON: key 'pp_layers[1]' = -1 is out of range (at "
                             "least 0)"},
    {"{\"pp_layers\":[]}", "strategy JSON: key 'pp_layers' is empty"},
    {"{\"tp\":2,\"TP\":4}", "strategy JSON: key 'TP' is given twice"},
};

Test(strategy_parse, errors_name_the_token)
{
    for (size_t i = 0; i < sizeof bad_parses / sizeof bad_parses[0]; i++) {
        par_strategy_t s;
        par_strategy_default(&s);
        s.tp = 7; /* untouched on error */
        moemu_errclear();
        cr_assert_eq(par_strategy_parse(bad_parses[i].text, &s), MOEMU_ERR_INVALID,
                     "'%s' parsed", bad_parses[i].text);
        cr_assert_str_eq(moemu_errmsg(), bad_parses[i].msg, "for '%s'", bad_parses[i].text);
        cr_assert_eq(s.tp, 7, "'%s' wrote the output", bad_parses[i].text);
    }
}

Test(strategy_parse, malformed_json)
{
    par_strategy_t s;
    cr_assert_eq(par_strategy_parse("{\"tp\":2", &s), MOEMU_ERR_INVALID);
    cr_assert(strncmp(moemu_errmsg(), "strategy JSON: ", 15) == 0, "%s", moemu_errmsg());
    cr_assert(strstr(moemu_errmsg(), "line 1"), "%s", moemu_errmsg());
    /* jansson refuses exact duplicates itself */
    cr_assert_eq(par_strategy_parse("{\"tp\":2,\"tp\":4}", &s), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "duplicate"), "%s", moemu_errmsg());
    cr_assert_eq(par_strategy_parse("{\"tp\":2} x", &s), MOEMU_ERR_INVALID);
}

Test(strategy_parse, pp_layers_errors)
{
    par_strategy_t s;
    par_strategy_default(&s);
    cr_assert_eq(par_strategy_set_pp_layers(&s, "5,,3"), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "stage split '5,,3': '' in the stage split is not a whole "
                                     "number in [0, 1000000]");
    cr_assert_eq(par_strategy_set_pp_layers(&s, "5,x"), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "stage split '5,x': 'x' in the stage split is not a whole "
                                     "number in [0, 1000000]");
    cr_assert_eq(par_strategy_set_pp_layers(&s, ""), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(),
                     "stage split '': the stage split is empty (expected e.g. 5,4,4,3)");
    char many[2048] = "1";
    for (int i = 1; i <= PAR_MAX_PP; i++) strcat(many, ",1");
    cr_assert_eq(par_strategy_set_pp_layers(&s, many), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "has more than 256 stages"), "%s", moemu_errmsg());
    cr_assert_eq(s.n_pp_layers, 0, "untouched on error");
}

/* ---- canonical form */

Test(strategy_format, canonical_and_reparseable)
{
    static const char *const cases[][2] = {
        {"EP8_TP2_PP1_DP1", "tp2-ep8"},
        {"tp2-ep4-pp2", "pp2-tp2-ep4"},
        {"dp4 pp4 ep16 sp", "pp4-dp4-tp1-sp-ep16"},
        {"dp4 pp4 ep16", "pp4-dp4-ep16"},
        {"dp2-tp2-ep4", "dp2-tp2-ep4"},
        {"", NULL},
        {"tp1", "tp1"},
        {"ep2", "ep2"},
        {"etp2-dp2", "dp2-etp2"},
        {"edp1-dp2", "dp2-edp1"},
        {"cp2 tp2 ep4", "cp2-tp2-ep4"},
        {"pp3=6/5/5-tp2", "pp3=6/5/5-tp2"},
        {"{\"pp\":1,\"pp_layers\":[2]}", "pp1=2"},
        {"tp2 sp etp2 ep2 cp2 dp2 pp2", "pp2-dp2-cp2-tp2-sp-ep2-etp2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!cases[i][1]) continue;
        par_strategy_t s = parse_ok(cases[i][0]), t;
        char buf[PAR_STRATEGY_STRLEN], again[PAR_STRATEGY_STRLEN];
        par_strategy_format(&s, buf, sizeof buf);
        cr_assert_str_eq(buf, cases[i][1], "format of '%s'", cases[i][0]);
        t = parse_ok(buf);
        par_strategy_format(&t, again, sizeof again);
        cr_assert_str_eq(again, buf);
        cr_assert(t.tp == s.tp && t.cp == s.cp && t.dp == s.dp && t.pp == s.pp &&
                      t.ep == s.ep && t.etp == s.etp && t.edp == s.edp && t.sp == s.sp &&
                      t.n_pp_layers == s.n_pp_layers,
                  "'%s' does not parse back", buf);
    }
    par_strategy_t s = parse_ok("dp2-tp2-ep4");
    char small[6];
    par_strategy_format(&s, small, sizeof small);
    cr_assert_str_eq(small, "dp2-t", "truncated like snprintf");
}

Test(strategy_format, world_and_edp)
{
    par_strategy_t s = parse_ok("pp2-dp2-cp2-tp2-ep4-etp2");
    cr_assert_eq(par_strategy_world(&s), 16);
    cr_assert_eq(par_strategy_edp(&s), 1);
    s = parse_ok("dp4-tp2-ep2");
    cr_assert_eq(par_strategy_edp(&s), 4);
    s = parse_ok("dp3-ep2");
    cr_assert_eq(par_strategy_edp(&s), 0, "EP does not divide the stage");
    s = parse_ok("dp4-ep2-edp3");
    cr_assert_eq(par_strategy_edp(&s), 3, "given");
}

/* ---- validation */

typedef struct {
    const char *strategy, *model;
    int devices;
    const char *pp_layers; /* NULL: none */
    const char *msg;
} invalid_t;

static const invalid_t invalid[] = {
    {"pp2-tp4", "moe-10b-plan", 16, NULL,
     "strategy pp2-tp4: PP*DP*CP*TP = 2*1*1*4 = 8 devices, but 16 are given"},
    {"tp2", "tiny", 1, NULL, "strategy tp2: PP*DP*CP*TP = 1*1*1*2 = 2 devices, but 1 is given"},
    {"dp4 pp4 ep16", "moe-10b-plan", 16, NULL,
     "strategy pp4-dp4-ep16: EP=16 needs 16 devices in a pipeline stage, but a stage has "
     "DP*CP*TP = 4"},
    /* DESIGN.md's first example string: EP folds inside a stage of 2 */
    {"EP8_TP2_PP1_DP1", "moe-10b-plan", 2, NULL,
     "strategy tp2-ep8: EP=8 needs 8 devices in a pipeline stage, but a stage has DP*CP*TP = 2"},
    {"dp6-ep4", "moe-10b-plan", 6, NULL,
     "strategy dp6-ep4: EP=4 does not divide the DP*CP*TP = 6 devices of a pipeline stage"},
    {"tp2-ep2-etp2", "moe-10b-plan", 2, NULL,
     "strategy tp2-ep2-etp2: EP*ETP = 2*2 = 4 needs 4 devices in a pipeline stage, but a stage "
     "has DP*CP*TP = 2"},
    {"dp6-ep2-etp2", "moe-10b-plan", 6, NULL,
     "strategy dp6-ep2-etp2: EP*ETP = 2*2 = 4 does not divide the DP*CP*TP = 6 devices of a "
     "pipeline stage"},
    {"dp2-tp2-ep4-edp2", "moe-10b-plan", 4, NULL,
     "strategy dp2-tp2-ep4-edp2: EDP=2 is given, but DP*CP*TP/(EP*ETP) = 4/4 = 1"},
    {"dp3-ep3", "tiny", 3, NULL, "strategy dp3-ep3: EP=3 does not divide the 8 experts"},
    {"tp3", "moe-10b-plan", 3, NULL, "strategy tp3: TP=3 does not divide the 16 query heads"},
    {"tp8 sp ep8", "tiny", 8, NULL, "strategy tp8-sp-ep8: TP=8 does not divide the 4 query heads"},
    {"etp5-dp5", "moe-10b-plan", 5, NULL,
     "strategy dp5-etp5: ETP=5 does not divide the experts' intermediate size 1024"},
    {"sp", "tiny", 1, NULL, "strategy tp1-sp: SP needs TP > 1, but TP=1"},
    {"pp5", "tiny", 5, NULL, "strategy pp5: PP=5 needs at least 5 layers, but the model has 4"},
    {"pp32", "moe-10b-plan", 32, NULL,
     "strategy pp32: PP=32 needs at least 32 layers, but the model has 16"},
    {"pp3=6/5/4", "moe-10b-plan", 3, NULL,
     "strategy pp3=6/5/4: the stage split 6/5/4 covers 15 layers, but the model has 16"},
    {"pp4", "moe-10b-plan", 4, "6,5,5",
     "strategy pp4=6/5/5: the stage split 6/5/5 has 3 stages, but PP=4"},
    {"pp3=16/0/0", "moe-10b-plan", 3, NULL,
     "strategy pp3=16/0/0: the stage split 16/0/0 gives stages 1, 2 no layers"},
    {"pp2=1/1", "moe-10b-plan", 2, NULL,
     "strategy pp2=1/1: the stage split 1/1 covers 2 layers, but the model has 16"},
    /* several rules at once, in the documented order */
    {"ep16-tp4-pp2", "moe-10b-plan", 16, NULL,
     "strategy pp2-tp4-ep16: PP*DP*CP*TP = 2*1*1*4 = 8 devices, but 16 are given; EP=16 needs "
     "16 devices in a pipeline stage, but a stage has DP*CP*TP = 4"},
    {"dp4 pp4 ep16", "moe-10b-plan", 8, NULL,
     "strategy pp4-dp4-ep16: PP*DP*CP*TP = 4*4*1*1 = 16 devices, but 8 are given; EP=16 needs 16 "
     "devices in a pipeline stage, but a stage has DP*CP*TP = 4"},
    {"tp3 dp2 ep3 sp", "tiny", 6, NULL,
     "strategy dp2-tp3-sp-ep3: EP=3 does not divide the 8 experts; TP=3 does not divide the 4 "
     "query heads"},
    {"tp3_ep3_etp5_sp_pp4", "tiny", 7, "1,0,4",
     "strategy pp4=1/0/4-tp3-sp-ep3-etp5: PP*DP*CP*TP = 4*1*1*3 = 12 devices, but 7 are given; "
     "EP*ETP = 3*5 = 15 needs 15 devices in a pipeline stage, but a stage has DP*CP*TP = 3; "
     "EP=3 does not divide the 8 experts; ETP=5 does not divide the experts' intermediate size "
     "96; TP=3 does not divide the 4 query heads; the stage split 1/0/4 has 3 stages, but PP=4; "
     "the stage split 1/0/4 gives stage 1 no layers; the stage split 1/0/4 covers 5 layers, but "
     "the model has 4"},
    {"pp5 sp dp2", "tiny", 4, NULL,
     "strategy pp5-dp2-tp1-sp: PP*DP*CP*TP = 5*2*1*1 = 10 devices, but 4 are given; PP=5 needs "
     "at least 5 layers, but the model has 4; SP needs TP > 1, but TP=1"},
};

/* The messages carry the built-in models' sizes: say so if they change. */
static void assert_models_as_written(void)
{
    const cfg_model_t *t = cfg_of("tiny"), *b = cfg_of("moe-10b-plan");
    cr_assert(t->vocab_size == 97 && t->num_hidden_layers == 4 && t->num_attention_heads == 4 &&
                  t->num_key_value_heads == 2 && t->num_local_experts == 8 &&
                  t->intermediate_size == 96 && t->num_shared_experts == 0,
              "the tiny model changed: update the expected messages");
    cr_assert(b->vocab_size == 32000 && b->num_hidden_layers == 16 &&
                  b->num_attention_heads == 16 && b->num_key_value_heads == 16 &&
                  b->num_local_experts == 16 && b->intermediate_size == 1024 &&
                  b->num_shared_experts == 0,
              "moe-10b-plan changed: update the expected messages");
}

Test(strategy_validate, every_broken_rule_with_its_numbers)
{
    assert_models_as_written();
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        const invalid_t *c = &invalid[i];
        par_strategy_t s = parse_ok(c->strategy);
        if (c->pp_layers)
            cr_assert_eq(par_strategy_set_pp_layers(&s, c->pp_layers), MOEMU_OK, "%s",
                         moemu_errmsg());
        par_dims_t m = dims_of(c->model);
        moemu_errclear();
        cr_assert_eq(par_strategy_validate(&s, &m, c->devices), MOEMU_ERR_INVALID,
                     "'%s' on %s with %d devices passed", c->strategy, c->model, c->devices);
        cr_assert_str_eq(moemu_errmsg(), c->msg, "for '%s' on %s", c->strategy, c->model);
    }
}

Test(strategy_validate, shared_experts_split_by_tp)
{
    cfg_model_t *c = cfg_of("tiny");
    c->num_shared_experts = 1;
    c->shared_expert_intermediate_size = 98;
    par_dims_t m = dims_for(c);
    par_strategy_t s = parse_ok("tp4");
    cr_assert_eq(par_strategy_validate(&s, &m, 4), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "strategy tp4: TP=4 does not divide the shared experts' "
                                     "intermediate size 98");
    s = parse_ok("tp2");
    cr_assert_eq(par_strategy_validate(&s, &m, 2), MOEMU_OK, "%s", moemu_errmsg());
    c->num_shared_experts = 0; /* no shared experts: their size is not checked */
    s = parse_ok("tp4");
    cr_assert_eq(par_strategy_validate(&s, &m, 4), MOEMU_OK, "%s", moemu_errmsg());
}

Test(strategy_validate, hand_built_degrees)
{
    par_strategy_t s;
    par_strategy_default(&s);
    s.tp = 0;
    s.ep = -1;
    cr_assert_eq(par_strategy_validate(&s, NULL, 0), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(),
                     "strategy tp0-ep-1: TP=0 must be at least 1; EP=-1 must be at least 1");
}

Test(strategy_validate, no_model_no_devices)
{
    par_strategy_t s = parse_ok("pp64-tp3");
    cr_assert_eq(par_strategy_validate(&s, NULL, 0), MOEMU_OK, "%s", moemu_errmsg());
    s = parse_ok("tp1-sp");
    cr_assert_eq(par_strategy_validate(&s, NULL, 0), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "strategy tp1-sp: SP needs TP > 1, but TP=1");
}

static const struct {
    const char *strategy, *model;
    int devices;
} valid[] = {
    {"tp1", "tiny", 1},
    {"tp2", "tiny", 2},
    {"tp4", "tiny", 4}, /* kv heads replicated: not an error */
    {"tp2 sp", "tiny", 2},
    {"cp2", "tiny", 2},
    {"cp4", "tiny", 4},
    {"dp2-ep2", "tiny", 2},
    {"dp8-ep8", "tiny", 8},
    {"dp2-etp2", "tiny", 2},
    {"dp4-ep2-etp2", "tiny", 4},
    {"pp2", "tiny", 2},
    {"pp4", "tiny", 4},
    {"pp3", "tiny", 3}, /* 2, 1, 1 layers */
    {"dp2", "tiny", 2},
    {"dp2-tp2-ep4", "tiny", 4},
    {"dp2-tp2-ep4", "moe-10b-plan", 4},
    {"cp2-tp2-ep4", "tiny", 4},
    {"pp2-dp2-tp2-ep2-sp", "tiny", 8},
    {"pp2-dp2-cp2-tp2-ep4-etp2-sp", "tiny", 16},
    {"pp4", "moe-10b-plan", 4},
    {"pp3", "moe-10b-plan", 3},
    {"pp16", "moe-10b-plan", 16},
    {"pp4=5/4/4/3", "moe-10b-plan", 4},
    {"dp4 pp4 ep4", "moe-10b-plan", 16},
    {"tp8-ep16-dp2", "moe-10b-plan", 16},
    {"dp2-tp2-ep4-edp1", "moe-10b-plan", 4},
    {"dp4-tp2-ep2-edp4", "moe-10b-plan", 8},
    {"{\"tp\":2,\"ep\":4,\"dp\":2,\"sp\":true}", "moe-10b-plan", 4},
};

Test(strategy_validate, valid_strategies_pass)
{
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        par_strategy_t s = parse_ok(valid[i].strategy);
        par_dims_t m = dims_of(valid[i].model);
        cr_assert_eq(par_strategy_validate(&s, &m, valid[i].devices), MOEMU_OK, "'%s' on %s: %s",
                     valid[i].strategy, valid[i].model, moemu_errmsg());
        cr_assert_eq(par_strategy_world(&s), valid[i].devices);
    }
}

/* ---- splits */

Test(layout_split, dp_split_and_micro_batches)
{
    int lo, hi;
    par_split(5, 2, 0, &lo, &hi);
    cr_assert(lo == 0 && hi == 2, "[%d,%d)", lo, hi);
    par_split(5, 2, 1, &lo, &hi);
    cr_assert(lo == 2 && hi == 5, "[%d,%d)", lo, hi);
    par_split(1, 2, 0, &lo, &hi);
    cr_assert(lo == 0 && hi == 0, "fewer sequences than replicas: [%d,%d)", lo, hi);
    par_split(1, 2, 1, &lo, &hi);
    cr_assert(lo == 0 && hi == 1, "[%d,%d)", lo, hi);
    par_split(4, 4, 3, &lo, &hi);
    cr_assert(lo == 3 && hi == 4, "[%d,%d)", lo, hi);
    /* the parts tile [0, n) for any n and parts */
    for (int n = 0; n < 20; n++)
        for (int parts = 1; parts < 7; parts++) {
            int at = 0;
            for (int i = 0; i < parts; i++) {
                par_split(n, parts, i, &lo, &hi);
                cr_assert(lo == at && hi >= lo && hi - lo <= n / parts + 1);
                at = hi;
            }
            cr_assert_eq(at, n);
        }
}

Test(layout_split, stage_layers)
{
    par_strategy_t s = parse_ok("pp3");
    const int want[3][2] = {{0, 6}, {6, 11}, {11, 16}};
    for (int p = 0; p < 3; p++) {
        int l0, l1;
        par_stage_layers(&s, 16, p, &l0, &l1);
        cr_assert(l0 == want[p][0] && l1 == want[p][1], "stage %d: [%d,%d)", p, l0, l1);
    }
    s = parse_ok("pp4");
    cr_assert_eq(par_strategy_set_pp_layers(&s, "5,4,4,3"), MOEMU_OK);
    const int uneven[4][2] = {{0, 5}, {5, 9}, {9, 13}, {13, 16}};
    for (int p = 0; p < 4; p++) {
        int l0, l1;
        par_stage_layers(&s, 16, p, &l0, &l1);
        cr_assert(l0 == uneven[p][0] && l1 == uneven[p][1], "stage %d: [%d,%d)", p, l0, l1);
    }
    s = parse_ok("pp5");
    const int five[5] = {4, 3, 3, 3, 3}; /* 16 = 5*3 + 1 */
    for (int p = 0, at = 0; p < 5; p++) {
        int l0, l1;
        par_stage_layers(&s, 16, p, &l0, &l1);
        cr_assert(l0 == at && l1 - l0 == five[p], "stage %d: [%d,%d)", p, l0, l1);
        at = l1;
    }
}

Test(layout_split, cp_zigzag)
{
    int r[2][2];
    par_cp_ranges(10, 2, 0, r); /* chunks of 3: [0,3) [3,6) [6,9) [9,10) */
    cr_assert(r[0][0] == 0 && r[0][1] == 3 && r[1][0] == 9 && r[1][1] == 10);
    par_cp_ranges(10, 2, 1, r);
    cr_assert(r[0][0] == 3 && r[0][1] == 6 && r[1][0] == 6 && r[1][1] == 9);
    par_cp_ranges(16, 4, 1, r); /* chunks of 2: 1 and 6 */
    cr_assert(r[0][0] == 2 && r[0][1] == 4 && r[1][0] == 12 && r[1][1] == 14);
    /* L smaller than 2*CP: chunks of 1, the later ones empty */
    const int want[4][2][2] = {{{0, 1}, {3, 3}}, {{1, 2}, {3, 3}}, {{2, 3}, {3, 3}},
                               {{3, 3}, {3, 3}}};
    for (int c = 0; c < 4; c++) {
        par_cp_ranges(3, 4, c, r);
        cr_assert(memcmp(r, want[c], sizeof r) == 0, "rank %d: [%d,%d) [%d,%d)", c, r[0][0],
                  r[0][1], r[1][0], r[1][1]);
    }
    par_cp_ranges(5, 1, 0, r);
    cr_assert(r[0][0] == 0 && r[0][1] == 5 && r[1][0] == 5 && r[1][1] == 5);
    par_cp_ranges(0, 2, 1, r);
    cr_assert(r[0][0] == r[0][1] && r[1][0] == r[1][1], "empty sequence");
    /* every position exactly once over the CP ranks */
    for (int L = 0; L < 40; L++)
        for (int cp = 1; cp <= 5; cp++) {
            int seen[40] = {0};
            for (int c = 0; c < cp; c++) {
                par_cp_ranges(L, cp, c, r);
                for (int k = 0; k < 2; k++) {
                    cr_assert(0 <= r[k][0] && r[k][0] <= r[k][1] && r[k][1] <= L);
                    for (int i = r[k][0]; i < r[k][1]; i++) seen[i]++;
                }
            }
            for (int i = 0; i < L; i++) cr_assert_eq(seen[i], 1, "L=%d cp=%d pos %d", L, cp, i);
        }
}

Test(layout_split, sp_slices)
{
    const int want[4][2] = {{0, 3}, {3, 6}, {6, 9}, {9, 10}};
    for (int t = 0; t < 4; t++) {
        int lo, hi;
        par_sp_range(10, 4, t, &lo, &hi);
        cr_assert(lo == want[t][0] && hi == want[t][1], "rank %d: [%d,%d)", t, lo, hi);
    }
    const int few[4][2] = {{0, 1}, {1, 2}, {2, 2}, {2, 2}};
    for (int t = 0; t < 4; t++) {
        int lo, hi;
        par_sp_range(2, 4, t, &lo, &hi);
        cr_assert(lo == few[t][0] && hi == few[t][1], "T < TP, rank %d: [%d,%d)", t, lo, hi);
    }
}

Test(layout_split, vocab_padding)
{
    const int cases[][4] = {{97, 2, 1, 98}, {97, 4, 3, 100}, {97, 1, 0, 97}, {32000, 8, 7, 32000}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int v0, v1; /* the last rank ends at the padded size */
        layer_vocab_rows(cases[i][0], cases[i][1], cases[i][2], &v0, &v1);
        cr_assert_eq(v1, cases[i][3], "V %d over TP %d", cases[i][0], cases[i][1]);
    }
    const cfg_model_t *m = cfg_of("tiny");
    par_strategy_t s = parse_ok("tp2");
    model_place_t p = place_of(m, &s, 0);
    cr_assert(p.dims.vocab0 == 0 && p.vocab1 == 49, "[%d,%d)", p.dims.vocab0, p.vocab1);
    p = place_of(m, &s, 1);
    cr_assert(p.dims.vocab0 == 49 && p.vocab1 == 98, "[%d,%d)", p.dims.vocab0, p.vocab1);
}

/* ---- layout */

static const char *const layouts[] = {
    "tp1", "tp4", "dp2-tp2-ep4", "pp2-dp2-cp2-tp2-ep2-etp2", "pp3-dp2-tp2-ep4", "cp3-tp2-ep2",
    "dp4-ep2-etp2", "pp2-dp3-cp2-ep6", "pp4-dp2-ep2",
};

Test(layout, ranks_and_coordinates_round_trip)
{
    cfg_model_t *c = cfg_of("moe-10b-plan");
    c->num_hidden_layers = 24; /* enough for pp3 and pp4 */
    c->num_local_experts = 48; /* divisible by every EP below */
    par_dims_t m = dims_for(c);
    int heads = c->num_attention_heads;
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0]; k++) {
        par_strategy_t s = parse_ok(layouts[k]);
        int world = par_strategy_world(&s), stage = s.dp * s.cp * s.tp;
        int edp = par_strategy_edp(&s);
        cr_assert_gt(edp, 0, "%s", layouts[k]);
        char *hit = calloc((size_t)world, 1), *moe_hit = calloc((size_t)world, 1);
        for (int r = 0; r < world; r++) {
            model_place_t f = place_of(c, &s, r);
            const par_place_t p = f.par;
            cr_assert_eq(p.rank, r);
            cr_assert(p.pp < s.pp && p.dp < s.dp && p.cp < s.cp && p.tp < s.tp && p.ep < s.ep &&
                          p.etp < s.etp && p.edp < edp,
                      "%s rank %d out of range", layouts[k], r);
            cr_assert_eq(par_layout_rank(&s, p.pp, p.dp, p.cp, p.tp), r, "%s", layouts[k]);
            cr_assert_eq(r, ((p.pp * s.dp + p.dp) * s.cp + p.cp) * s.tp + p.tp);
            cr_assert_eq(r % stage, (p.edp * s.ep + p.ep) * s.etp + p.etp, "%s", layouts[k]);
            hit[par_layout_rank(&s, p.pp, p.dp, p.cp, p.tp)]++;
            moe_hit[p.pp * stage + (p.edp * s.ep + p.ep) * s.etp + p.etp]++;
            int l0, l1;
            par_stage_layers(&s, m.layers, p.pp, &l0, &l1);
            cr_assert(p.layer0 == l0 && p.layer1 == l1);
            cr_assert_eq(p.has_embed, p.pp == 0);
            cr_assert_eq(p.has_lm_head, p.pp == s.pp - 1);
            cr_assert_eq(f.head1 - f.dims.head0, heads / s.tp);
            cr_assert_eq(f.dims.head0, p.tp * heads / s.tp);
            cr_assert_eq(p.expert1 - p.expert0, m.experts / s.ep);
            cr_assert_eq(p.expert0, p.ep * m.experts / s.ep);
            cr_assert_eq(p.ffn0, p.etp * m.expert_ffn / s.etp);
            cr_assert_eq(p.ffn1 - p.ffn0, m.expert_ffn / s.etp);
        }
        for (int r = 0; r < world; r++)
            cr_assert(hit[r] == 1 && moe_hit[r] == 1, "%s: rank %d", layouts[k], r);
        free(hit);
        free(moe_hit);
    }
}

Test(layout, groups_partition_the_world)
{
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0]; k++) {
        par_strategy_t s = parse_ok(layouts[k]);
        int world = par_strategy_world(&s), stage = s.dp * s.cp * s.tp;
        const int size[PAR_GROUP__COUNT] = {s.tp, s.cp, s.dp, s.pp, s.ep, s.etp,
                                            par_strategy_edp(&s), s.cp * s.tp, stage};
        int *ranks = malloc((size_t)world * sizeof *ranks), *other = malloc(
                                                                 (size_t)world * sizeof *other);
        for (int g = 0; g < PAR_GROUP__COUNT; g++) {
            int *owner = malloc((size_t)world * sizeof *owner);
            for (int r = 0; r < world; r++) owner[r] = -1;
            for (int r = 0; r < world; r++) {
                int n = par_layout_group(&s, (par_group_t)g, r, ranks);
                cr_assert_eq(n, size[g], "%s %s group of %d", layouts[k],
                             par_group_name((par_group_t)g), r);
                int me = par_layout_group_rank(&s, (par_group_t)g, r);
                cr_assert_eq(ranks[me], r, "%s %s: rank %d is not member %d", layouts[k],
                             par_group_name((par_group_t)g), r, me);
                /* every member sees the same group: one owner per rank */
                for (int i = 0; i < n; i++) {
                    cr_assert(ranks[i] >= 0 && ranks[i] < world);
                    cr_assert_eq(par_layout_group(&s, (par_group_t)g, ranks[i], other), n);
                    cr_assert(memcmp(ranks, other, (size_t)n * sizeof *ranks) == 0,
                              "%s %s: %d and %d disagree", layouts[k],
                              par_group_name((par_group_t)g), r, ranks[i]);
                    cr_assert_eq(par_layout_group_rank(&s, (par_group_t)g, ranks[i]), i);
                    if (owner[ranks[i]] < 0) owner[ranks[i]] = ranks[0];
                    cr_assert_eq(owner[ranks[i]], ranks[0], "%s %s: rank %d in two groups",
                                 layouts[k], par_group_name((par_group_t)g), ranks[i]);
                }
            }
            for (int r = 0; r < world; r++) cr_assert_geq(owner[r], 0);
            free(owner);
        }
        free(ranks);
        free(other);
    }
}

/* Expected groups written out: for each rank in order, the group it lies
 * in, each group listed from its member order. */
static void assert_groups(const char *strategy, par_group_t g, const int *want, int n_groups,
                          int size)
{
    par_strategy_t s = parse_ok(strategy);
    int world = par_strategy_world(&s);
    cr_assert_eq(n_groups * size, world);
    for (int k = 0; k < n_groups; k++)
        for (int i = 0; i < size; i++) {
            int got[64];
            int r = want[k * size + i];
            cr_assert_eq(par_layout_group(&s, g, r, got), size);
            for (int j = 0; j < size; j++)
                cr_assert_eq(got[j], want[k * size + j], "%s %s group of %d: member %d is %d",
                             strategy, par_group_name(g), r, j, got[j]);
        }
}

Test(layout, fold_dp2_tp2_ep4)
{
    const char *s = "dp2-tp2-ep4";
    assert_groups(s, PAR_GROUP_TP, (const int[]){0, 1, 2, 3}, 2, 2);
    assert_groups(s, PAR_GROUP_DP, (const int[]){0, 2, 1, 3}, 2, 2);
    assert_groups(s, PAR_GROUP_EP, (const int[]){0, 1, 2, 3}, 1, 4);
    assert_groups(s, PAR_GROUP_ETP, (const int[]){0, 1, 2, 3}, 4, 1);
    assert_groups(s, PAR_GROUP_EDP, (const int[]){0, 1, 2, 3}, 4, 1);
    assert_groups(s, PAR_GROUP_REPLICA, (const int[]){0, 1, 2, 3}, 2, 2);
    assert_groups(s, PAR_GROUP_STAGE, (const int[]){0, 1, 2, 3}, 1, 4);
    par_strategy_t st = parse_ok(s);
    par_dims_t m = dims_of("moe-10b-plan");
    for (int r = 0; r < 4; r++) {
        par_place_t p;
        par_layout_place(&st, &m, r, &p);
        cr_assert(p.ep == r && p.edp == 0 && p.etp == 0);
        cr_assert(p.expert0 == 4 * r && p.expert1 == 4 * r + 4);
        cr_assert(p.dp == r / 2 && p.tp == r % 2);
    }
}

Test(layout, fold_dp2_cp2_tp2_ep2_etp2)
{
    /* s = (dp*2 + cp)*2 + tp = (edp*2 + ep)*2 + etp */
    const char *s = "dp2-cp2-tp2-ep2-etp2";
    assert_groups(s, PAR_GROUP_TP, (const int[]){0, 1, 2, 3, 4, 5, 6, 7}, 4, 2);
    assert_groups(s, PAR_GROUP_CP, (const int[]){0, 2, 1, 3, 4, 6, 5, 7}, 4, 2);
    assert_groups(s, PAR_GROUP_DP, (const int[]){0, 4, 1, 5, 2, 6, 3, 7}, 4, 2);
    assert_groups(s, PAR_GROUP_ETP, (const int[]){0, 1, 2, 3, 4, 5, 6, 7}, 4, 2);
    assert_groups(s, PAR_GROUP_EP, (const int[]){0, 2, 1, 3, 4, 6, 5, 7}, 4, 2);
    assert_groups(s, PAR_GROUP_EDP, (const int[]){0, 4, 1, 5, 2, 6, 3, 7}, 4, 2);
    assert_groups(s, PAR_GROUP_REPLICA, (const int[]){0, 1, 2, 3, 4, 5, 6, 7}, 2, 4);
    assert_groups(s, PAR_GROUP_PP, (const int[]){0, 1, 2, 3, 4, 5, 6, 7}, 8, 1);
    par_strategy_t st = parse_ok(s);
    par_dims_t m = dims_of("tiny");
    par_place_t p;
    par_layout_place(&st, &m, 6, &p); /* dp1 cp1 tp0; edp1 ep1 etp0 */
    cr_assert(p.dp == 1 && p.cp == 1 && p.tp == 0 && p.edp == 1 && p.ep == 1 && p.etp == 0);
    cr_assert(p.expert0 == 4 && p.expert1 == 8 && p.ffn0 == 0 && p.ffn1 == 48);
    par_layout_place(&st, &m, 3, &p); /* dp0 cp1 tp1; edp0 ep1 etp1 */
    cr_assert(p.dp == 0 && p.cp == 1 && p.tp == 1 && p.edp == 0 && p.ep == 1 && p.etp == 1);
    cr_assert(p.ffn0 == 48 && p.ffn1 == 96);
}

Test(layout, fold_across_stages)
{
    /* pp2-dp2-tp2-ep4: each stage of 4 is one EP group */
    const char *s = "pp2-dp2-tp2-ep4";
    assert_groups(s, PAR_GROUP_EP, (const int[]){0, 1, 2, 3, 4, 5, 6, 7}, 2, 4);
    assert_groups(s, PAR_GROUP_PP, (const int[]){0, 4, 1, 5, 2, 6, 3, 7}, 4, 2);
    assert_groups(s, PAR_GROUP_STAGE, (const int[]){0, 1, 2, 3, 4, 5, 6, 7}, 2, 4);
    /* dp4-tp2-ep2: stage of 8 = EDP 4 x EP 2 */
    assert_groups("dp4-tp2-ep2", PAR_GROUP_EP, (const int[]){0, 1, 2, 3, 4, 5, 6, 7}, 4, 2);
    assert_groups("dp4-tp2-ep2", PAR_GROUP_EDP, (const int[]){0, 2, 4, 6, 1, 3, 5, 7}, 2, 4);
}

Test(layout, kv_heads_split_or_replicated)
{
    cfg_model_t *m = cfg_of("tiny"); /* 4 heads, 2 kv heads */
    par_strategy_t s = parse_ok("tp4");
    const int kv[4] = {0, 0, 1, 1};
    for (int r = 0; r < 4; r++) {
        model_place_t p = place_of(m, &s, r);
        cr_assert(p.dims.head0 == r && p.head1 == r + 1);
        cr_assert(p.dims.kv_head0 == kv[r] && p.kv_head1 == kv[r] + 1, "rank %d: kv [%d,%d)", r,
                  p.dims.kv_head0, p.kv_head1);
        cr_assert(p.kv_replicated);
    }
    s = parse_ok("tp2");
    for (int r = 0; r < 2; r++) {
        model_place_t p = place_of(m, &s, r);
        cr_assert(p.dims.head0 == 2 * r && p.head1 == 2 * r + 2);
        cr_assert(p.dims.kv_head0 == r && p.kv_head1 == r + 1);
        cr_assert_not(p.kv_replicated);
    }
    /* 12 heads over 3 kv heads (groups of 4), TP=4: a rank's 3 query heads
     * would straddle two kv heads, which the kernels (and Megatron-Core)
     * do not allow */
    m->num_attention_heads = 12;
    m->num_key_value_heads = 3;
    par_dims_t d = dims_for(m);
    s = parse_ok("tp4");
    cr_assert_eq(par_strategy_validate(&s, &d, 4), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "strategy tp4: TP=4 neither divides nor is a multiple "
                                     "of the 3 key/value heads");
    /* 12 heads over 2 kv heads, TP=4: each rank's heads inside one kv head */
    m->num_key_value_heads = 2;
    cr_assert_eq(par_strategy_validate(&s, &d, 4), MOEMU_OK, "%s", moemu_errmsg());
    const int want[4] = {0, 0, 1, 1};
    for (int r = 0; r < 4; r++) {
        model_place_t p = place_of(m, &s, r);
        cr_assert(p.dims.kv_head0 == want[r] && p.kv_head1 == want[r] + 1, "rank %d: kv [%d,%d)",
                  r, p.dims.kv_head0, p.kv_head1);
    }
}

Test(layout, shared_experts_and_stage_ends)
{
    cfg_model_t *m = cfg_of("moe-10b-plan");
    m->num_shared_experts = 2;
    m->shared_expert_intermediate_size = 512;
    par_strategy_t s = parse_ok("pp3-tp2");
    model_place_t p = place_of(m, &s, 3); /* pp1 tp1 */
    cr_assert(p.shared_ffn0 == 256 && p.shared_ffn1 == 512);
    cr_assert(p.par.layer0 == 6 && p.par.layer1 == 11);
    cr_assert(!p.par.has_embed && !p.par.has_lm_head);
    p = place_of(m, &s, 0);
    cr_assert(p.par.has_embed && !p.par.has_lm_head);
    p = place_of(m, &s, 5);
    cr_assert(!p.par.has_embed && p.par.has_lm_head);
    m->num_shared_experts = 0;
    p = place_of(m, &s, 3);
    cr_assert(p.shared_ffn0 == 0 && p.shared_ffn1 == 0, "no shared experts");
    s = parse_ok("tp2");
    p = place_of(m, &s, 1);
    cr_assert(p.par.has_embed && p.par.has_lm_head, "PP=1: both ends");
}

Test(layout, group_names_and_bad_ranks)
{
    const char *const names[PAR_GROUP__COUNT] = {"tp", "cp", "dp", "pp", "ep",
                                                 "etp", "edp", "replica", "stage"};
    for (int g = 0; g < PAR_GROUP__COUNT; g++)
        cr_assert_str_eq(par_group_name((par_group_t)g), names[g]);
    par_strategy_t s = parse_ok("tp2");
    int ranks[4];
    cr_assert_eq(par_layout_group(&s, PAR_GROUP_TP, 2, ranks), 0);
    cr_assert_eq(par_layout_group(&s, PAR_GROUP_TP, -1, ranks), 0);
    s = parse_ok("dp3-ep2");
    cr_assert_eq(par_layout_group(&s, PAR_GROUP_EP, 0, ranks), 0, "EP does not fold");
}
