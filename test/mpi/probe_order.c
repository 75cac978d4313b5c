/*
 * probe_order.c - probes and matched probes see messages in MPI's order even
 * while a held rank's drain buffer holds some of them; waiting on inactive
 * persistent requests is harmless.
 *
 * Usage:     probe_order [batches]     (default 500)
 * Ranks:     2 or more; each even rank streams sequence-numbered messages to
 *            the next odd rank in bursts (so many sit unexpected, and a hold
 *            drains them); the odd rank takes them alternately with
 *            MPI_Probe + MPI_Recv and MPI_Mprobe + MPI_Mrecv and checks the
 *            sequence. With an odd count the last rank only joins the final
 *            reduction (every rank streams, so nobody waits long in it).
 * Found by review: a probe loop once asked MPI before re-reading the drain
 * buffer after a hold step had drained newer messages.
 */
#define _DEFAULT_SOURCE /* usleep */
#include "mpitest.h"

#include <stdio.h>
#include <unistd.h>

#define BURST 1000

int main(int argc, char **argv)
{
    int size = init_world(&argc, &argv, 2);
    long batches = count_arg(argc, argv, 500, "batch");

    /* legal no-ops: completion calls on inactive persistent requests */
    int zero = 0, flag = 0;
    MPI_Request p;
    const int sender = g_rank % 2 == 0 && g_rank + 1 < size, receiver = g_rank % 2 == 1;
    const int peer = sender ? g_rank + 1 : g_rank - 1;
    if (sender)
        CHK(MPI_Send_init(&zero, 1, MPI_INT, peer, 7, MPI_COMM_WORLD, &p));
    else
        CHK(MPI_Recv_init(&zero, 1, MPI_INT, MPI_ANY_SOURCE, 7, MPI_COMM_WORLD, &p));
    CHK(MPI_Wait(&p, MPI_STATUS_IGNORE));
    CHK(MPI_Test(&p, &flag, MPI_STATUS_IGNORE));
    CHK(MPI_Request_get_status(p, &flag, MPI_STATUS_IGNORE));
    CHK(MPI_Request_free(&p));

    uint64_t hash = 0;
    long violations = 0;
    if (sender) {
        static int buf[BURST];
        MPI_Request r[BURST];
        for (long b = 0; b < batches; b++) {
            for (int i = 0; i < BURST; i++) {
                buf[i] = (int)(b * BURST + i);
                CHK(MPI_Isend(&buf[i], 1, MPI_INT, peer, 1 + (i & 1), MPI_COMM_WORLD, &r[i]));
            }
            CHK(MPI_Waitall(BURST, r, MPI_STATUSES_IGNORE));
            usleep((unsigned)(mix64((uint64_t)b) % 8000)); /* time for quiesce cycles */
        }
    } else if (receiver) {
        int expect = 0;
        for (long n = 0; n < batches * BURST; n++) {
            MPI_Status st;
            int v = -1, count = 0;
            if (n & 1) {
                MPI_Message m;
                CHK(MPI_Mprobe(peer, MPI_ANY_TAG, MPI_COMM_WORLD, &m, &st));
                CHK(MPI_Mrecv(&v, 1, MPI_INT, &m, &st));
            } else {
                MPI_Status rst;
                CHK(MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
                CHK(MPI_Recv(&v, 1, MPI_INT, st.MPI_SOURCE, st.MPI_TAG, MPI_COMM_WORLD, &rst));
                if (rst.MPI_TAG != st.MPI_TAG || rst.MPI_SOURCE != st.MPI_SOURCE)
                    fail("probe said %d/%d, receive got %d/%d", st.MPI_SOURCE, st.MPI_TAG,
                         rst.MPI_SOURCE, rst.MPI_TAG);
            }
            CHK(MPI_Get_count(&st, MPI_INT, &count));
            if (count != 1 || st.MPI_TAG != 1 + (v % BURST & 1))
                fail("message %d: count %d tag %d", v, count, st.MPI_TAG);
            if (v != expect)
                violations++;
            expect = v + 1;
            hash = mix64(hash ^ (uint64_t)v);
        }
        if (violations)
            fail("%ld order violations", violations);
    }
    uint64_t total = 0;
    CHK(MPI_Reduce(&hash, &total, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
    if (g_rank == 0)
        printf("probe_order: ranks=%d messages per pair=%ld checksum=%016llx\n", size, batches * BURST,
               (unsigned long long)total);
    CHK(MPI_Finalize());
    return 0;
}
