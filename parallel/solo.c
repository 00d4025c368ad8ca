/* One process (a build without MPI, or a run not started by mpirun):
 * every device runs here, and the process functions of par.h are
 * trivial. */
#include "parallel/par_impl.h"

moemu_status_t par_proc_init(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    return MOEMU_OK;
}

int par_proc_rank(void) { return 0; }
int par_proc_count(void) { return 1; }

moemu_status_t par_proc_set_devices_per_process(int n)
{
    if (n < 0)
        return moemu_fail(MOEMU_ERR_INVALID, "--devices-per-process %d: must be positive", n);
    return MOEMU_OK;
}

void par_proc_devices(int world, int p, int *lo, int *hi)
{
    *lo = p == 0 ? 0 : world;
    *hi = world;
}

moemu_status_t par_proc_agree(moemu_status_t st, uint64_t fingerprint)
{
    (void)fingerprint;
    return st;
}

moemu_status_t par_proc_cluster(int world, bool spread, emu_cluster_opts_t *o)
{
    (void)world, (void)spread, (void)o;
    return MOEMU_OK;
}

moemu_status_t par_proc_after_run(emu_cluster_t *cl, moemu_status_t st)
{
    (void)cl;
    return st;
}

moemu_status_t par_proc_merge(void *buf, size_t n, par_merge_t how)
{
    (void)buf, (void)n, (void)how;
    return MOEMU_OK;
}

bool par_proc_exit(bool failed, const char *msg)
{
    (void)failed, (void)msg;
    return false;
}

const par_transport_t *par_spanning_transport(void) { return NULL; }

const char *par_proc_stop_note(void) { return ""; }
