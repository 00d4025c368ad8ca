/* A stand-in for Criterion, for ThreadSanitizer builds only.
 *
 * Criterion 2.4 cannot start under ThreadSanitizer (its BoxFort arena
 * wants fixed addresses that TSan's shadow memory occupies, then it
 * crashes: Snaipe/Criterion#274). This header runs the same test files
 * without it: the subset of Criterion's API that moemu's tests use, each
 * test in its own forked process, in name order. Select it with
 *   make check CRITERION_CFLAGS='-I$(top_srcdir)/tests/tsan' CRITERION_LIBS=
 * A test fails on a failed assertion, a crash, or a non-zero exit (TSan
 * exits 66 after a report). Options: --filter GLOB (suite/name),
 * --verbose (accepted), -jN (accepted; tests run one at a time). */
#ifndef MOEMU_CRITERION_SHIM_H
#define MOEMU_CRITERION_SHIM_H

#include <fnmatch.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct criterion_test_params;
typedef struct {
    void (*init)(void);
    void (*fini)(void);
    int signal, exit_code;
    bool disabled;
    const char *description;
    double timeout;
} crs_opts_t;

typedef struct crs_test {
    const char *suite, *name;
    void (*fn)(void);
    void (*pfn)(void *);
    struct criterion_test_params (*params)(void);
    crs_opts_t opts;
    struct crs_test *next;
} crs_test_t;

typedef struct crs_suite {
    const char *name;
    crs_opts_t opts;
    struct crs_suite *next;
} crs_suite_t;

struct criterion_test_params {
    size_t size;
    void *params;
    size_t length;
    void (*cleanup)(struct criterion_test_params *);
};

/* One registry per test program; the header is included by one file. */
static crs_test_t *crs_tests;
static crs_suite_t *crs_suites;
static int crs_expect_failed;

static inline void crs_add_test(crs_test_t *t)
{
    t->next = crs_tests;
    crs_tests = t;
}

static inline void crs_add_suite(crs_suite_t *s)
{
    s->next = crs_suites;
    crs_suites = s;
}

#define CRS_ID(s, n, what) crs_##s##_##n##_##what

#define Test(s, n, ...)                                                        \
    static void CRS_ID(s, n, impl)(void);                                      \
    static crs_test_t CRS_ID(s, n, desc) = {                                   \
        #s, #n, CRS_ID(s, n, impl), NULL, NULL, {__VA_ARGS__}, NULL};          \
    __attribute__((constructor)) static void CRS_ID(s, n, reg)(void)           \
    {                                                                          \
        crs_add_test(&CRS_ID(s, n, desc));                                     \
    }                                                                          \
    static void CRS_ID(s, n, impl)(void)

#define TestSuite(s, ...)                                                      \
    static crs_suite_t crs_suite_##s = {#s, {__VA_ARGS__}, NULL};              \
    __attribute__((constructor)) static void crs_suite_reg_##s(void)           \
    {                                                                          \
        crs_add_suite(&crs_suite_##s);                                         \
    }

#define ParameterizedTestParameters(s, n)                                      \
    static struct criterion_test_params CRS_ID(s, n, params)(void)

#define cr_make_param_array(Type, Array, Len, ...)                             \
    ((struct criterion_test_params){sizeof(Type), (void *)(Array), (Len),      \
                                    NULL})

#define ParameterizedTest(Param, s, n, ...)                                    \
    static struct criterion_test_params CRS_ID(s, n, params)(void);            \
    static void CRS_ID(s, n, impl)(Param);                                     \
    static void CRS_ID(s, n, tramp)(void *p) { CRS_ID(s, n, impl)(p); }        \
    static crs_test_t CRS_ID(s, n, desc) = {                                   \
        #s, #n, NULL, CRS_ID(s, n, tramp), CRS_ID(s, n, params),               \
        {__VA_ARGS__}, NULL};                                                  \
    __attribute__((constructor)) static void CRS_ID(s, n, reg)(void)           \
    {                                                                          \
        crs_add_test(&CRS_ID(s, n, desc));                                     \
    }                                                                          \
    static void CRS_ID(s, n, impl)(Param)

/* ---- assertions: fatal ones end the test's process at once */

static inline void crs_check(bool ok, bool fatal, const char *file, int line,
                             const char *expr, const char *fmt, ...)
{
    if (ok) return;
    fprintf(stderr, "[----] %s:%d: %s\n[----]   %s\n", file, line,
            fatal ? "Assertion Failed" : "Expectation Failed", expr);
    if (fmt && fmt[0]) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "[----]   ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
    }
    fflush(stderr);
    if (fatal) exit(1);
    crs_expect_failed = 1;
}

#define CRS_CHECK(fatal, ok, expr, ...)                                        \
    crs_check((ok), (fatal), __FILE__, __LINE__, (expr), "" __VA_ARGS__)

#define cr_assert(c, ...) CRS_CHECK(1, !!(c), #c, __VA_ARGS__)
#define cr_expect(c, ...) CRS_CHECK(0, !!(c), #c, __VA_ARGS__)
#define cr_assert_not(c, ...) CRS_CHECK(1, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_expect_not(c, ...) CRS_CHECK(0, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_assert_fail(...) CRS_CHECK(1, 0, "fail", __VA_ARGS__)
#define cr_expect_fail(...) CRS_CHECK(0, 0, "fail", __VA_ARGS__)

#define CRS_CMP(fatal, a, op, b, ...)                                          \
    CRS_CHECK(fatal, (a)op(b), #a " " #op " " #b, __VA_ARGS__)
#define cr_assert_eq(a, b, ...) CRS_CMP(1, a, ==, b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) CRS_CMP(1, a, !=, b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) CRS_CMP(1, a, <, b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) CRS_CMP(1, a, <=, b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) CRS_CMP(1, a, >, b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) CRS_CMP(1, a, >=, b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...) CRS_CMP(0, a, ==, b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...) CRS_CMP(0, a, !=, b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...) CRS_CMP(0, a, <, b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...) CRS_CMP(0, a, <=, b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...) CRS_CMP(0, a, >, b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...) CRS_CMP(0, a, >=, b, __VA_ARGS__)

#define cr_assert_null(p, ...) CRS_CHECK(1, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_expect_null(p, ...) CRS_CHECK(0, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...)                                             \
    CRS_CHECK(1, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...)                                             \
    CRS_CHECK(0, (p) != NULL, #p " != NULL", __VA_ARGS__)

#define cr_assert_str_eq(a, b, ...)                                            \
    CRS_CHECK(1, strcmp((a), (b)) == 0, #a " equals " #b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...)                                            \
    CRS_CHECK(0, strcmp((a), (b)) == 0, #a " equals " #b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...)                                           \
    CRS_CHECK(1, strcmp((a), (b)) != 0, #a " differs from " #b, __VA_ARGS__)
#define cr_expect_str_neq(a, b, ...)                                           \
    CRS_CHECK(0, strcmp((a), (b)) != 0, #a " differs from " #b, __VA_ARGS__)

#define cr_assert_float_eq(a, b, eps, ...)                                     \
    CRS_CHECK(1, fabs((double)(a) - (double)(b)) <= (eps),                     \
              #a " == " #b " within " #eps, __VA_ARGS__)
#define cr_expect_float_eq(a, b, eps, ...)                                     \
    CRS_CHECK(0, fabs((double)(a) - (double)(b)) <= (eps),                     \
              #a " == " #b " within " #eps, __VA_ARGS__)

#define cr_assert_arr_eq(a, b, n, ...)                                         \
    CRS_CHECK(1, memcmp((a), (b), (n)) == 0, #a " equals " #b, __VA_ARGS__)
#define cr_expect_arr_eq(a, b, n, ...)                                         \
    CRS_CHECK(0, memcmp((a), (b), (n)) == 0, #a " equals " #b, __VA_ARGS__)

static inline void cr_log_info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[----] ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}
#define cr_log_warn cr_log_info
#define cr_log_error cr_log_info

/* ---- the runner */

static inline int crs_cmp(const void *a, const void *b)
{
    const crs_test_t *x = *(crs_test_t *const *)a, *y = *(crs_test_t *const *)b;
    int c = strcmp(x->suite, y->suite);
    return c ? c : strcmp(x->name, y->name);
}

static inline double crs_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Run test t (parameter index i, or -1) in a child; 0 passed, 1 failed,
 * 2 crashed. */
static inline int crs_run(const crs_test_t *t, const crs_suite_t *s, long i)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        double to = t->opts.timeout > 0 ? t->opts.timeout : 600;
        alarm((unsigned)to + 1);
        if (s && s->opts.init) s->opts.init();
        if (t->opts.init) t->opts.init();
        if (i < 0) t->fn();
        else {
            struct criterion_test_params p = t->params();
            t->pfn((char *)p.params + (size_t)i * p.size);
        }
        if (t->opts.fini) t->opts.fini();
        if (s && s->opts.fini) s->opts.fini();
        fflush(NULL);
        exit(crs_expect_failed ? 1 : 0); /* exit, not _exit: TSan reports */
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        ;
    if (WIFSIGNALED(st)) return WTERMSIG(st) == t->opts.signal ? 0 : 2;
    if (t->opts.signal) return 1;
    return WEXITSTATUS(st) == t->opts.exit_code ? 0 : 1;
}

__attribute__((weak)) int main(int argc, char **argv)
{
    const char *filter = NULL;
    for (int a = 1; a < argc; a++) {
        if (!strncmp(argv[a], "--filter=", 9)) filter = argv[a] + 9;
        else if (!strcmp(argv[a], "--filter") && a + 1 < argc) filter = argv[++a];
    }
    size_t n = 0;
    for (crs_test_t *t = crs_tests; t; t = t->next) n++;
    crs_test_t **all = calloc(n ? n : 1, sizeof *all);
    n = 0;
    for (crs_test_t *t = crs_tests; t; t = t->next) all[n++] = t;
    qsort(all, n, sizeof *all, crs_cmp);
    int tested = 0, passed = 0, failed = 0, crashed = 0;
    for (size_t k = 0; k < n; k++) {
        crs_test_t *t = all[k];
        char id[512];
        snprintf(id, sizeof id, "%s/%s", t->suite, t->name);
        if (t->opts.disabled || (filter && fnmatch(filter, id, 0) != 0))
            continue;
        const crs_suite_t *s = NULL;
        for (crs_suite_t *x = crs_suites; x; x = x->next)
            if (!strcmp(x->name, t->suite)) s = x;
        long np = t->params ? (long)t->params().length : -1;
        for (long i = t->params ? 0 : -1; i < (t->params ? np : 0); i++) {
            double t0 = crs_now();
            int r = crs_run(t, s, i);
            tested++;
            passed += r == 0;
            failed += r == 1;
            crashed += r == 2;
            char idx[32] = "";
            if (i >= 0) snprintf(idx, sizeof idx, " [param %ld]", i);
            fprintf(stderr, "[%s] %s::%s%s: (%.2fs)\n",
                    r == 0 ? "PASS" : r == 1 ? "FAIL" : "CRASH", t->suite,
                    t->name, idx, crs_now() - t0);
        }
    }
    free(all);
    fprintf(stderr,
            "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | "
            "Crashing: %d \n",
            tested, passed, failed, crashed);
    return failed || crashed ? 1 : 0;
}

#endif
