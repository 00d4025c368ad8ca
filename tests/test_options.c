/* engine/cli/cli_options.c: the shared option table, the one parser over a
 * command's list (shared and own options), the help and the flags put in
 * the library's messages. */
#include <criterion/criterion.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "engine/cli/cli.h"

typedef struct {
    double x;
    int pick;
    bool on;
    const char *called;
} own_t;

static moemu_status_t call(const char *arg, void *v)
{
    ((own_t *)v)->called = arg;
    if (!strcmp(arg, "bad")) return moemu_fail(MOEMU_ERR_INVALID, "thing 'bad': no good");
    return MOEMU_OK;
}

static const cli_opt_t list[] = {
    CLI_HEAD("shared:"),
    CLI_USE("model"), CLI_USE("batch"), CLI_USE("seed"), CLI_USE("prompt-lens"),
    {.name = "json", .type = CLI_SHARED, .help = "my own words"},
    CLI_HEAD("own:"),
    {.name = "x", .arg = "X", .type = CLI_NUM_BELOW, .off = offsetof(own_t, x), .lo = 0, .hi = 1,
     .help = "a fraction"},
    {.name = "pick", .arg = "a|b|c", .type = CLI_CHOICE, .off = offsetof(own_t, pick),
     .choices = "a|b|c", .help = "one of three"},
    {.name = "on", .type = CLI_SET, .off = offsetof(own_t, on), .help = "a switch"},
    {.name = "thing", .arg = "T", .type = CLI_CALL, .parse = call, .field = "thing",
     .help = NULL /* not shown */},
    {.name = NULL},
};

static moemu_status_t run(int argc, char **argv, cli_shared_t *sh, own_t *own, int *first)
{
    bool help;
    cli_shared_init(sh);
    *own = (own_t){0};
    return cli_parse("moemu t", argc, argv, list, sh, own, &help, first);
}

Test(options, shared_and_own_values)
{
    char *argv[] = {"t", "--model", "tiny", "--batch", "3", "--seed", "18446744073709551615",
                    "--x", "0.5", "--pick", "c", "--on", "--thing", "ok", "--json", "j",
                    "--prompt-lens", "4,5", "operand"};
    cli_shared_t sh;
    own_t own;
    int first;
    cr_assert_eq(run(19, argv, &sh, &own, &first), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_str_eq(sh.model, "tiny");
    cr_assert_eq(sh.wl.batch, 3);
    cr_assert_eq(sh.seed, UINT64_MAX);
    cr_assert_str_eq(sh.json, "j");
    cr_assert_str_eq(sh.wl.lens, "4,5");
    cr_assert_eq(own.x, 0.5);
    cr_assert_eq(own.pick, 2);
    cr_assert(own.on);
    cr_assert_str_eq(own.called, "ok");
    cr_assert_eq(first, 18);
    cr_assert_eq(cli_no_operands("moemu t", 19, argv, first), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "moemu t: unexpected argument 'operand'");
    /* defaults the commands share */
    cr_assert_str_eq(sh.hw, CLI_DEFAULT_HW);
    cr_assert_eq(sh.wl.decode, 16);
    cr_assert_eq(sh.micro_batches, 1);
}

static void refused(const char *flag, const char *arg, const char *want)
{
    char *argv[] = {"t", (char *)flag, (char *)arg};
    cli_shared_t sh;
    own_t own;
    int first;
    cr_assert_eq(run(arg ? 3 : 2, argv, &sh, &own, &first), MOEMU_ERR_INVALID, "%s", flag);
    cr_assert_str_eq(moemu_errmsg(), want);
}

Test(options, errors_name_the_flag)
{
    refused("--batch", "0", "--batch '0': expected a whole number in [1, 1048576]");
    refused("--seed", "-3", "--seed '-3': expected a non-negative whole number");
    refused("--x", "1", "--x '1': expected a number in [0, 1)");
    refused("--x", "nan", "--x 'nan': expected a number in [0, 1)");
    refused("--pick", "d", "--pick 'd': expected a, b or c");
    refused("--thing", "bad", "--thing 'bad': no good");
    refused("--decode", "3", "moemu t: unknown or incomplete option '--decode' (see moemu t --help)");
    refused("--model", NULL, "moemu t: unknown or incomplete option '--model' (see moemu t --help)");
}

Test(options, help_and_library_messages)
{
    char buf[4096] = "";
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    cr_assert_not_null(f);
    cli_help(f, list);
    fclose(f);
    cr_assert(strstr(buf, "shared:\n  --model NAME|FILE      built-in model"), "%s", buf);
    cr_assert(strstr(buf, "  --json FILE            my own words\n"), "%s", buf);
    cr_assert(strstr(buf, "own:\n  --x X                  a fraction\n"), "%s", buf);
    cr_assert(strstr(buf, "  --on                   a switch\n"), "%s", buf);
    cr_assert(!strstr(buf, "--thing"), "%s", buf);
    cr_assert(strstr(buf, "  --help                 this text\n"), "%s", buf);

    moemu_fail(MOEMU_ERR_INVALID, "prompt lengths '4,x': length 2 is not a positive integer");
    cr_assert_eq(cli_flag_names(MOEMU_ERR_INVALID, list), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "--prompt-lens '4,x': length 2 is not a positive integer");
    moemu_fail(MOEMU_ERR_INVALID, "routing 'x': expected uniform, zipf:S or replay:FILE");
    cr_assert_eq(cli_flag_names(MOEMU_ERR_INVALID, list), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "routing 'x': expected uniform, zipf:S or replay:FILE",
                     "not an option of this list: left as it is");
}

Test(options, shared_table_is_whole)
{
    for (const cli_opt_t *o = cli_shared_options; o->name; o++) {
        cr_assert_not_null(o->help, "--%s has no help", o->name);
        cr_assert_neq(o->type, CLI_SHARED);
        for (const cli_opt_t *p = o + 1; p->name; p++)
            cr_assert_str_neq(o->name, p->name, "--%s defined twice", o->name);
    }
}
