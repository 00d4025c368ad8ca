/* calibrate: a hardware preset's efficiency parameters (device.mfu,
 * device.bw_util, device.launch_s, and the overlap of the kernel kinds
 * the preset sets, one value for all) fitted to published or measured
 * figures of one card (a validate CSV's rows of that card marked fit),
 * judged on the rows marked holdout, written as a new preset.
 * docs/report.md (Calibration) describes the fit. */
#ifndef MOEMU_CALIBRATE_H
#define MOEMU_CALIBRATE_H

#include "engine/tools/validate.h"

typedef struct {
    const char *hw;  /* the card: its rows and its preset (name or file) */
    const char *engine; /* NULL: every engine's rows, on the preset; else
                           that engine's rows, from its profile's figures
                           for the card (if any), fitted into its profile */
    val_opts_t run;  /* the dry runs' options (run.hw is set here) */
    int max_evals;   /* runs of the fit rows at most; 0: 300 */
} cal_opts_t;

/* The parameters a fit can move, in the order printed. */
enum { CAL_MFU, CAL_BW_UTIL, CAL_LAUNCH, CAL_OVERLAP, CAL_HOST, CAL_PARAMS };

typedef struct {
    char card[64];           /* the preset's name */
    emu_hw_t before, after;  /* with the engine's figures, if any */
    val_set_t rows;          /* the card's rows, with the fitted figures */
    double *before_moemu;    /* (rows.n) each row's figure with the preset */
    double loss_before, loss_after; /* mean of log(ratio)^2 over fit rows */
    int evals, fit, holdout;
    int param[CAL_PARAMS];   /* the parameters fitted: mfu, bw_util,
                                launch_s; the overlap when the preset sets
                                kernel kinds; host_seq_s with an engine */
    int nparams;
} cal_result_t;

/* Names of the parameters, in their order. */
extern const char *const cal_param_names[CAL_PARAMS];
/* A parameter of spec by index (overlap: the first kind set's). */
double cal_param(const emu_spec_t *spec, int i);
/* Whether r's fit moved parameter i. */
bool cal_fitted(const cal_result_t *r, int i);

/* Fit o->hw's parameters to the fit rows of that card in all (others
 * ignored, FP8 rows left out): Nelder-Mead on the mean squared log ratio,
 * each parameter within its range (mfu, bw_util in [0.01, 1], launch_s
 * in [0, 100 us], overlap in [0, 1], host_seq_s in [0, 1 ms]).
 * MOEMU_ERR_INVALID when the card has no fit row. Free with cal_free. */
moemu_status_t cal_fit(cal_result_t *r, const val_set_t *all, const cal_opts_t *o);
void cal_free(cal_result_t *r);
/* The parameters before and after, each row before and after, and the
 * summaries of the fit and holdout rows before and after. */
void cal_print(const cal_result_t *r, FILE *f);
/* With o->engine, the engine's profile with the card's entry set to the
 * fitted parameters and a comment saying how they were fitted; else the
 * card's preset with them, named NAME-calibrated and the comment added.
 * Written to path. */
moemu_status_t cal_write(const cal_result_t *r, const cal_opts_t *o, const char *path);

#endif
