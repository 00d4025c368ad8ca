/* parallel private: the communicator structure and its meeting points,
 * shared by comm.c and coll.c. */
#ifndef MOEMU_PAR_IMPL_H
#define MOEMU_PAR_IMPL_H

#include <stdint.h>

#include "parallel/par.h"

/* What a member brings to a collective: written by its owner before the
 * first meeting, read by every member between the two meetings. */
typedef struct {
    emu_coll_t kind;
    const void *send;
    void *recv;
    size_t count;
    emu_dtype_t dtype;
    par_op_t op;
    int root;
    const size_t *scounts, *sdispls, *rcounts, *rdispls; /* all-to-all-v */
    double clock;
    bool nodata; /* the member is in no-data mode: nothing moves */
} par_slot_t;

/* An eager message, queued on its receiver's mailbox. */
typedef struct par_msg {
    struct par_msg *next;
    int src;
    size_t count;
    emu_dtype_t dtype;
    emu_msg_time_t t;
    bool nodata; /* sent in no-data mode: no payload */
    void *data;
} par_msg_t;

struct par_comm {
    emu_cluster_t *cluster;
    int n;
    int *granks;    /* n: global rank of each member */
    int *rank_of;   /* cluster size: member rank of each device, or -1 */
    emu_dev_t **devs;
    emu_link_t link;
    int algo[EMU_COLL__COUNT];
    size_t stream_bytes; /* outputs this large are written streaming */
    par_slot_t *slots; /* n */

    emu_sync_t *sync; /* guards what follows */
    int arrived;
    uint64_t episode;
    uint64_t *arrived_at; /* n: episode + 1 of each member's last arrival */
    par_msg_t **mbox_head, **mbox_tail; /* n: messages to each member */
};

/* Meet every member: returns when all have arrived. abortable: give up
 * with MOEMU_ERR_PEER when the run aborts, or MOEMU_ERR_INVALID when a
 * member's function returned without coming; a meeting that every member
 * is sure to reach (the second of a collective) is not abortable, so that
 * nobody leaves while others still touch its buffers. */
moemu_status_t par_meet(par_comm_t *c, int r, bool abortable);

#endif
