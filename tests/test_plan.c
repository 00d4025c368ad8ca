/* Deployment plans: each kind of inconsistency gets its verdict and its
 * reason; bad plan files get their message. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/tools/plan.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/moemu-plan-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(plan, .init = setup, .fini = teardown);

static const char *write_plan(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Evaluate a plan (no real-math check unless asked), return its JSON. */
static json_t *evaluate(const char *text, bool check, bool *hold)
{
    plan_t p;
    cr_assert_eq(plan_load(&p, write_plan("p", text)), MOEMU_OK, "%s", moemu_errmsg());
    FILE *devnull = fopen("/dev/null", "w");
    plan_opts_t o = {.no_check = !check, .out = devnull};
    json_t *res;
    cr_assert_eq(plan_evaluate(&p, &o, &res, hold), MOEMU_OK, "%s", moemu_errmsg());
    fclose(devnull);
    plan_free(&p);
    return res;
}

static json_t *claim(json_t *res, int i) { return json_array_get(json_object_get(res, "claims"), (size_t)i); }

static const char *verdict(json_t *res, int i)
{
    return json_string_value(json_object_get(claim(res, i), "verdict"));
}

/* tiny: 654016 parameters, 4 layers, 4 heads, 8 experts of 96 */
#define TINY "\"model\": \"tiny\", \"hardware\": \"card-400tf-64gb\", " \
             "\"workload\": {\"batch\": 4, \"prompt_len\": 32, \"decode\": 4}"

Test(plan, devices_from_degrees)
{
    bool hold;
    json_t *r = evaluate("{" TINY ", \"devices\": 16, \"strategy\": \"tp2-dp2\"}", false, &hold);
    cr_assert_not(hold);
    json_t *a = json_array_get(json_object_get(r, "arithmetic"), 0);
    cr_assert_eq(json_integer_value(json_object_get(a, "stated")), 16);
    cr_assert_eq(json_integer_value(json_object_get(a, "from_degrees")), 4);
    cr_assert(json_is_false(json_object_get(a, "holds")));
    /* invalid on 16 devices: the nearest valid ones are named and measured */
    cr_assert(json_is_false(json_object_get(r, "strategy_valid")));
    cr_assert(strstr(json_string_value(json_object_get(r, "strategy_error")),
                     "PP*DP*CP*TP = 1*2*1*2 = 4 devices, but 16 are given"));
    json_t *near = json_object_get(r, "nearest_valid");
    cr_assert_gt(json_array_size(near), 0);
    cr_assert_str_eq(json_string_value(json_object_get(r, "strategy_measured")),
                     json_string_value(json_array_get(near, 0)));
    json_decref(r);
}

Test(plan, parameters_off_by_a_factor)
{
    bool hold;
    json_t *r = evaluate("{" TINY ", \"strategy\": \"tp2\", \"claims\": ["
                         "{\"metric\": \"total_parameters\", \"value\": 6540160},"
                         "{\"metric\": \"total_parameters\", \"value\": 654016},"
                         "{\"metric\": \"total_parameters\", \"value\": 65401.6}]}",
                         false, &hold);
    cr_assert_not(hold);
    cr_assert_str_eq(verdict(r, 0), "off by a factor 10 (the plan's figure is too high)");
    cr_assert_str_eq(verdict(r, 1), "holds");
    cr_assert_str_eq(verdict(r, 2), "off by a factor 10 (the plan's figure is too low)");
    json_decref(r);
}

Test(plan, expert_parallel_larger_than_a_stage)
{
    bool hold;
    json_t *r = evaluate("{" TINY ", \"devices\": 4, \"strategy\": \"pp2 dp2 ep8\"}", false, &hold);
    cr_assert_not(hold);
    cr_assert_str_eq(json_string_value(json_object_get(r, "strategy_error")),
                     "strategy pp2-dp2-ep8: EP=8 needs 8 devices in a pipeline stage, but a "
                     "stage has DP*CP*TP = 2");
    json_t *a = json_array_get(json_object_get(r, "arithmetic"), 1);
    cr_assert(json_is_false(json_object_get(a, "holds")));
    json_decref(r);
}

/* The figures of a run, to build claims that hold or are off. */
static double measured(json_t *r, const char *section, const char *key)
{
    json_t *rep = json_object_get(r, "report");
    return json_number_value(json_object_get(json_object_get(rep, section), key));
}

Test(plan, performance_holds_off_and_impossible)
{
    bool hold;
    json_t *r = evaluate("{" TINY ", \"strategy\": \"tp2-ep2\"}", false, &hold);
    double ttft = measured(r, "latency", "ttft_batch_s"), e2e = measured(r, "latency", "e2e_s");
    cr_assert_gt(ttft, 0);
    json_decref(r);
    char text[2048];
    snprintf(text, sizeof text,
             "{" TINY ", \"strategy\": \"tp2-ep2\", \"claims\": ["
             "{\"metric\": \"ttft_s\", \"value\": %.17g},"
             "{\"metric\": \"e2e_latency_s\", \"value\": %.17g},"
             "{\"metric\": \"ttft_s\", \"value\": 1e-12},"
             "{\"metric\": \"memory_per_device_gb\", \"value\": 1e-9},"
             "{\"metric\": \"memory_per_device_gb\", \"value\": 64, \"bound\": \"at_most\"},"
             "{\"metric\": \"communication_share\", \"value\": 1.5},"
             "{\"metric\": \"throughput_per_device_tokens_per_ms\", \"value\": 1e12}]}",
             ttft * 1.1, e2e * 3);
    r = evaluate(text, false, &hold);
    cr_assert_not(hold);
    cr_assert_str_eq(verdict(r, 0), "holds");
    cr_assert_str_eq(verdict(r, 1), "off by a factor 3 (the plan's figure is too high)");
    cr_assert(strstr(verdict(r, 2), "impossible: the FLOPs need at least"), "%s", verdict(r, 2));
    cr_assert(strstr(verdict(r, 3), "impossible: the weights alone need"), "%s", verdict(r, 3));
    cr_assert_str_eq(verdict(r, 4), "holds");
    cr_assert_str_eq(verdict(r, 5), "impossible: a share above 100%");
    cr_assert(strstr(verdict(r, 6), "impossible: the FLOPs allow at most"), "%s", verdict(r, 6));
    json_decref(r);
}

Test(plan, does_not_fit)
{
    /* a card of 1 MB: tiny's weights alone do not fit */
    bool hold;
    json_t *r = evaluate(
        "{\"model\": \"tiny\", \"workload\": {\"batch\": 2, \"prompt_len\": 8, \"decode\": 2},"
        "\"hardware\": {\"name\": \"small\", \"comment\": \"test\", \"device\": {\"peak_flops\": 1e12,"
        "\"mfu\": 0.5, \"mem_bw\": 1e11, \"bw_util\": 0.5, \"mem_capacity\": 1e6, \"launch_s\": 1e-6},"
        "\"topology\": {\"devices_per_node\": 8, \"intra_bw\": 1e10, \"intra_lat\": 1e-6,"
        "\"inter_bw\": 1e9, \"inter_lat\": 1e-5}}, \"strategy\": \"tp2\", \"claims\": ["
        "{\"metric\": \"memory_per_device_gb\", \"value\": 0.5, \"bound\": \"at_most\"}]}",
        false, &hold);
    cr_assert(json_is_false(json_object_get(r, "fits")));
    cr_assert(strstr(verdict(r, 0), "impossible: device"), "%s", verdict(r, 0));
    cr_assert(strstr(verdict(r, 0), "out of memory"), "%s", verdict(r, 0));
    json_decref(r);
}

Test(plan, numbers_checked_in_real_math)
{
    bool hold;
    json_t *r = evaluate("{" TINY ", \"strategy\": \"dp2-tp2-ep4\"}", true,
                         &hold);
    json_t *c = json_object_get(r, "numerical_check");
    cr_assert_not_null(c);
    cr_assert(json_is_true(json_object_get(c, "pass")));
    cr_assert_eq(json_integer_value(json_object_get(c, "layers")), 4);
    cr_assert(hold, "a valid strategy with no claims holds");
    json_decref(r);
}

static void load_error(const char *text, const char *want)
{
    plan_t p;
    cr_assert_neq(plan_load(&p, write_plan("bad", text)), MOEMU_OK);
    cr_assert(strstr(moemu_errmsg(), want), "'%s' lacks '%s'", moemu_errmsg(), want);
}

Test(plan, bad_files)
{
    load_error("[1, 2]", "a plan is a JSON object");
    load_error("{\"strategy\": \"tp2\"}", "plan key 'model' is required but missing");
    load_error("{\"model\": \"tiny\"}", "plan key 'strategy' is required but missing");
    load_error("{\"model\": \"tiny\", \"strategy\": \"tp2\", \"devices\": 0}", "plan key 'devices' = 0 is out of range (at least 1)");
    load_error("{\"model\": \"tiny\", \"strategy\": \"tp2\", \"claims\": [{\"metric\": "
               "\"speed\", \"value\": 1}]}", "plan key 'claims[0].metric' names metric 'speed'");
    load_error("{\"model\": \"tiny\", \"strategy\": \"tp2\", \"claims\": [{\"metric\": "
               "\"ttft_s\", \"value\": -1}]}", "plan key 'claims[0].value' must be a positive number, got -1");
    load_error("{\"model\": \"tiny\", \"strategy\": \"tp2\", \"workload\": {\"prompt_len\": "
               "true}}", "plan key 'workload.prompt_len' must be a length, a list of lengths or \"MIN:MAX\", got true");
    load_error("{\"model\": {\"vocab_size\": 10}, \"strategy\": \"tp2\"}", "hidden_size");
    load_error("{\"model\": \"tiny\", \"hardware\": \"nope\", \"strategy\": \"tp2\"}", "nope");
    load_error("{\"model\": \"tiny\", \"strategy\": \"tp2\"", "line");
}

Test(plan, examples_load)
{
    const char *src = getenv("MOEMU_SRCDIR");
    cr_assert_not_null(src, "MOEMU_SRCDIR is set by make check");
    for (char c = 'a'; c <= 'e'; c++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/examples/plans/%c.json", src, c);
        plan_t p;
        cr_assert_eq(plan_load(&p, path), MOEMU_OK, "%s", moemu_errmsg());
        cr_assert_gt(p.nclaims, 2);
        plan_free(&p);
    }
}
