/* moemu sweep --plot: TTFT against throughput per device of every
 * candidate, the Pareto front highlighted, drawn by gnuplot (Debian's
 * gnuplot-nox) into a scratch image that goes through outfile like every
 * other output. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/cli/cli.h"
#include "engine/tools/outfile.h"

/* gnuplot on PATH, as popen's shell will find it. */
static bool gnuplot_found(void)
{
    const char *path = getenv("PATH");
    if (!path) return false;
    for (const char *p = path;;) {
        const char *e = strchr(p, ':');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char file[4096];
        if (n > 0 && n + 9 < sizeof file) {
            snprintf(file, sizeof file, "%.*s/gnuplot", (int)n, p);
            struct stat sb;
            if (stat(file, &sb) == 0 && S_ISREG(sb.st_mode) && access(file, X_OK) == 0)
                return true;
        }
        if (!e) return false;
        p = e + 1;
    }
}

/* s as a gnuplot single-quoted string (a quote doubled). */
static void gp_string(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', f);
        if (*s != '\n' && *s != '\r') fputc(*s, f);
    }
    fputc('\'', f);
}

static bool ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcasecmp(s + n - m, tail) == 0;
}

static int cmp_ttft(const void *pa, const void *pb)
{
    const sweep_row_t *a = *(const sweep_row_t *const *)pa, *b = *(const sweep_row_t *const *)pb;
    if (a->ttft != b->ttft) return a->ttft < b->ttft ? -1 : 1;
    return (a->tpms_dev < b->tpms_dev) - (a->tpms_dev > b->tpms_dev);
}

/* The commands and data blocks of the plot. */
static moemu_status_t gp_script(FILE *f, const sweep_t *s, const char *out, bool svg,
                                const char *title)
{
    const sweep_row_t **front = malloc(sizeof *front * (size_t)(s->n_rows + 1));
    if (!front) return moemu_fail(MOEMU_ERR_NOMEM, "cannot plot %d candidates", s->n_rows);
    int nf = 0, nkept = 0, nmissed = 0;
    double lo = INFINITY, hi = 0;
    for (int i = 0; i < s->n_rows; i++) {
        const sweep_row_t *r = &s->rows[i];
        if (r->pareto) front[nf++] = r;
        nkept += r->fate == SWEEP_KEPT && !r->pareto;
        nmissed += r->fate == SWEEP_MISSED;
        if (r->fate == SWEEP_NO_FIT || r->ttft <= 0) continue;
        lo = r->ttft < lo ? r->ttft : lo;
        hi = r->ttft > hi ? r->ttft : hi;
    }
    qsort(front, (size_t)nf, sizeof *front, cmp_ttft);
    fprintf(f, "set terminal %s size 1000,650 font 'sans,11'\nset output ",
            svg ? "svg dynamic" : "pngcairo");
    gp_string(f, out);
    fputs("\nset title ", f);
    gp_string(f, title ? title : "moemu sweep");
    fputs(" noenhanced\nset xlabel 'TTFT of the batch (virtual ms)'\n"
          "set ylabel 'throughput per device (tokens per virtual ms)'\n"
          "set grid\nset key outside bottom center horizontal noenhanced\n"
          "set style line 1 lc rgb '#9a9a9a' pt 7 ps 0.6\n"
          "set style line 2 lc rgb '#d0a000' pt 2 ps 0.8\n"
          "set style line 3 lc rgb '#c0002a' lw 2 pt 5 ps 1.2\n",
          f);
    if (hi > 0 && hi / lo > 50) fputs("set logscale x\n", f);
    fputs("$kept << EOD\n", f);
    for (int i = 0; i < s->n_rows; i++)
        if (s->rows[i].fate == SWEEP_KEPT && !s->rows[i].pareto)
            fprintf(f, "%.9g %.9g\n", 1e3 * s->rows[i].ttft, s->rows[i].tpms_dev);
    fputs("EOD\n$missed << EOD\n", f);
    for (int i = 0; i < s->n_rows; i++)
        if (s->rows[i].fate == SWEEP_MISSED)
            fprintf(f, "%.9g %.9g\n", 1e3 * s->rows[i].ttft, s->rows[i].tpms_dev);
    fputs("EOD\n$front << EOD\n", f);
    for (int i = 0; i < nf; i++)
        fprintf(f, "%.9g %.9g \"%s x%d\"\n", 1e3 * front[i]->ttft, front[i]->tpms_dev,
                front[i]->name, front[i]->micro_batches);
    fputs("EOD\nplot ", f);
    free(front);
    const char *sep = "";
    if (nkept) {
        fputs("$kept using 1:2 with points ls 1 title 'candidates'", f);
        sep = ", ";
    }
    if (nmissed) {
        fprintf(f, "%s$missed using 1:2 with points ls 2 title 'misses the constraints'", sep);
        sep = ", ";
    }
    if (nf) {
        fprintf(f, "%s$front using 1:2 with linespoints ls 3 title 'Pareto front', "
                   "$front using 1:2:3 with labels offset 1,0.6 left font ',8' notitle", sep);
        sep = ", ";
    }
    if (!*sep) fputs("NaN notitle", f);
    fputs("\nset output\n", f);
    return MOEMU_OK;
}

moemu_status_t cli_sweep_plot_check(const char *path)
{
    if (!ends_with(path, ".svg") && !ends_with(path, ".png"))
        return moemu_fail(MOEMU_ERR_INVALID, "--plot %s: expected a file name ending in .svg or "
                                             ".png", path);
    if (!gnuplot_found())
        return moemu_fail(MOEMU_ERR_INVALID, "--plot %s needs gnuplot, which is not on PATH: "
                                             "install Debian's gnuplot-nox (apt-get install "
                                             "gnuplot-nox)", path);
    return MOEMU_OK;
}

/* gnuplot's script, a scratch file in /tmp (its name goes through the
 * shell: mkstemp's characters only). */
static moemu_status_t write_script(const char **script, const sweep_t *s, const char *image,
                                   bool svg, const char *title)
{
    int fd;
    MOEMU_CHECK(outfile_scratch("/tmp/moemu-plot-XXXXXX", script, &fd));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return moemu_fail(MOEMU_ERR_IO, "cannot write gnuplot's script %s: %s", *script,
                          strerror(errno));
    }
    moemu_status_t st = gp_script(f, s, image, svg, title);
    if ((ferror(f) | fclose(f)) && st == MOEMU_OK)
        st = moemu_fail(MOEMU_ERR_IO, "cannot write gnuplot's script %s: %s", *script,
                        strerror(errno));
    return st;
}

/* Run gnuplot on script; it drew image when it exited 0 and wrote it. */
static moemu_status_t run_gnuplot(const char *script, const char *image, const char *path)
{
    char cmd[64], msg[512] = "";
    snprintf(cmd, sizeof cmd, "gnuplot %s 2>&1", script);
    FILE *gp = popen(cmd, "r");
    size_t m = 0;
    int rc = -1;
    if (gp) {
        for (size_t k; (k = fread(msg + m, 1, sizeof msg - 1 - m, gp)) > 0;) m += k;
        char sink[256];
        while (fread(sink, 1, sizeof sink, gp) > 0) {}
        rc = pclose(gp);
    }
    msg[m] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    struct stat sb;
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0 && stat(image, &sb) == 0 &&
        sb.st_size > 0)
        return MOEMU_OK;
    return moemu_fail(MOEMU_ERR_IO, "--plot %s: gnuplot failed%s%s", path, m ? ": " : "", msg);
}

/* The image's bytes, copied from gnuplot's scratch file into the output. */
static moemu_status_t copy_image(FILE *f, const void *arg)
{
    int fd = *(const int *)arg;
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        if (fwrite(buf, 1, (size_t)n, f) != (size_t)n) break;
    if (n < 0) return moemu_fail(MOEMU_ERR_IO, "cannot read gnuplot's image: %s", strerror(errno));
    return MOEMU_OK;
}

moemu_status_t cli_sweep_plot(const sweep_t *s, const char *path, const char *title)
{
    MOEMU_CHECK(cli_sweep_plot_check(path));
    /* gnuplot draws into a scratch file by its name; the image is then
     * written as every output is (a device, a symlink, a regular file) */
    const char *image, *script;
    int fd;
    outfile_begin();
    moemu_status_t st = outfile_scratch("/tmp/moemu-plot-XXXXXX", &image, &fd);
    if (st != MOEMU_OK) return outfile_end(st);
    st = write_script(&script, s, image, ends_with(path, ".svg"), title);
    if (st == MOEMU_OK) st = run_gnuplot(script, image, path);
    if (st == MOEMU_OK) st = outfile_write(path, copy_image, &fd);
    close(fd);
    return outfile_end(st);
}
