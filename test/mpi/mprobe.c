/*
 * mprobe.c - matched probes: MPI_Mprobe/MPI_Mrecv and MPI_Improbe/MPI_Imrecv.
 *
 * Each round every rank MPI_Isends PER_PEER messages of varying length
 * (4..3003 ints, so both eager and rendezvous sizes; 3 tags) to every other
 * rank, computes for a while (so messages wait unmatched), then receives
 * what it is owed with a deterministic mix of
 *   MPI_Mprobe(ANY_SOURCE, ANY_TAG) + MPI_Mrecv,
 *   MPI_Improbe(ANY_SOURCE, ANY_TAG) polled between computation + MPI_Imrecv
 *     + MPI_Wait,
 *   MPI_Mprobe(source, ANY_TAG) + MPI_Mrecv,
 *   MPI_Improbe(ANY_SOURCE, tag) + MPI_Imrecv + MPI_Test loop,
 *   MPI_Mprobe(source, tag) + MPI_Mrecv,
 * sizing each buffer exactly from MPI_Get_count on the probe status and
 * checking that each probe found the message MPI's matching order demands.
 * A probe of MPI_PROC_NULL (MPI_MESSAGE_NO_PROC) is checked once per round.
 * Rounds alternate between two duplicates of MPI_COMM_WORLD so a fast peer's
 * next round cannot be confused with this one.
 *
 * Usage:     mprobe [rounds]         (default 1500)
 * Supports:  np >= 2 (the output depends on np).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <string.h>

#include "mpitest.h"

#define DEFAULT_ROUNDS 1500
#define PER_PEER 8
#define NTAGS 3
#define MIN_LEN 4  /* header: sender, seq, tag, round */
#define MAX_LEN (MIN_LEN + 2999)
#define WORK_CHUNK 500L
#define ROUND_WORK 200 /* chunks of computation per round (~0.5 ms) */

static uint64_t msg_hash(int round, int src, int dst, int seq)
{
    return mix64(((uint64_t)round << 40) ^ ((uint64_t)src << 28) ^
                 ((uint64_t)dst << 16) ^ (uint64_t)seq);
}
static int msg_tag(uint64_t h) { return 1 + (int)(h % NTAGS); }
static int msg_len(uint64_t h) { return MIN_LEN + (int)((h >> 8) % (MAX_LEN - MIN_LEN + 1)); }
static int payload(uint64_t h, int k) { return (int)(mix64(h + (uint64_t)k) >> 33); }

struct source {
    int rank, remaining;
    char consumed[PER_PEER];
    int tag[PER_PEER];
};

/* Earliest unreceived message of a source matching tag (or MPI_ANY_TAG). */
static int expected_seq(const struct source *s, int tag)
{
    for (int q = 0; q < PER_PEER; q++)
        if (!s->consumed[q] && (tag == MPI_ANY_TAG || s->tag[q] == tag))
            return q;
    return -1;
}

int main(int argc, char **argv)
{
    const int size = init_world(&argc, &argv, 2);
    const long rounds = count_arg(argc, argv, DEFAULT_ROUNDS, "round");
    MPI_Comm comms[2];
    CHK(MPI_Comm_dup(MPI_COMM_WORLD, &comms[0]));
    CHK(MPI_Comm_dup(MPI_COMM_WORLD, &comms[1]));

    const int npeers = size - 1;
    const int nsend = npeers * PER_PEER;
    int **sbuf = malloc(sizeof *sbuf * (size_t)nsend);
    MPI_Request *sreq = malloc(sizeof *sreq * (size_t)nsend);
    struct source *src = malloc(sizeof *src * (size_t)npeers);
    if (!sbuf || !sreq || !src)
        fail("out of memory");
    for (int i = 0; i < nsend; i++)
        if (!(sbuf[i] = malloc(sizeof(int) * MAX_LEN)))
            fail("out of memory");

    uint64_t total_hash = 0;
    const long report_every = rounds >= 10 ? rounds / 10 : 1;
    for (long rl = 0; rl < rounds; rl++) {
        const int round = (int)rl;
        MPI_Comm comm = comms[round % 2];

        /* Send everything first; all of it is owed to someone. */
        for (int seq = 0, i = 0; seq < PER_PEER; seq++)
            for (int d = 1; d < size; d++, i++) {
                const int dst = (g_rank + d) % size;
                const uint64_t h = msg_hash(round, g_rank, dst, seq);
                const int len = msg_len(h);
                int *m = sbuf[i];
                m[0] = g_rank;
                m[1] = seq;
                m[2] = msg_tag(h);
                m[3] = round;
                for (int k = MIN_LEN; k < len; k++)
                    m[k] = payload(h, k);
                CHK(MPI_Isend(m, len, MPI_INT, dst, msg_tag(h), comm, &sreq[i]));
            }

        for (int c = 0; c < ROUND_WORK; c++)
            work(WORK_CHUNK, (uint64_t)c);

        for (int p = 0; p < npeers; p++) {
            src[p].rank = (g_rank + 1 + p) % size;
            src[p].remaining = PER_PEER;
            for (int q = 0; q < PER_PEER; q++) {
                src[p].consumed[q] = 0;
                src[p].tag[q] = msg_tag(msg_hash(round, src[p].rank, g_rank, q));
            }
        }

        for (int i = 0; i < nsend; i++) {
            const uint64_t r = mix64(((uint64_t)round << 32) ^ ((uint64_t)g_rank << 20) ^ (uint64_t)i);
            const int mode = (int)(r % 5);
            /* A source with messages left, and the tag of one of them. */
            int p = (int)((r >> 8) % (uint64_t)npeers);
            while (src[p].remaining == 0)
                p = (p + 1) % npeers;
            int j = (int)((r >> 16) % (uint64_t)src[p].remaining), tag = -1;
            for (int q = 0; q < PER_PEER; q++)
                if (!src[p].consumed[q] && j-- == 0)
                    tag = src[p].tag[q];

            int psrc = MPI_ANY_SOURCE, ptag = MPI_ANY_TAG;
            if (mode == 2 || mode == 4)
                psrc = src[p].rank;
            if (mode == 3 || mode == 4)
                ptag = tag;

            MPI_Message msg;
            MPI_Status pst, st;
            if (mode == 1 || mode == 3) {
                int flag = 0;
                for (long c = 0; !flag; c++) {
                    CHK(MPI_Improbe(psrc, ptag, comm, &flag, &msg, &pst));
                    if (!flag)
                        work(WORK_CHUNK, (uint64_t)c);
                }
            } else {
                CHK(MPI_Mprobe(psrc, ptag, comm, &msg, &pst));
            }
            if (msg == MPI_MESSAGE_NULL || msg == MPI_MESSAGE_NO_PROC)
                fail("round %d: probe %d/%d returned no message handle", round, psrc, ptag);

            int count;
            CHK(MPI_Get_count(&pst, MPI_INT, &count));
            if (count < MIN_LEN || count > MAX_LEN)
                fail("round %d: probe %d/%d: count %d out of range", round, psrc, ptag, count);
            int *buf = malloc(sizeof *buf * (size_t)count); /* exactly sized */
            if (!buf)
                fail("out of memory");
            if (mode == 1 || mode == 3) {
                MPI_Request rq;
                CHK(MPI_Imrecv(buf, count, MPI_INT, &msg, &rq));
                if (msg != MPI_MESSAGE_NULL)
                    fail("MPI_Imrecv did not consume the message handle");
                if (mode == 1) {
                    CHK(MPI_Wait(&rq, &st));
                } else {
                    int flag = 0;
                    while (!flag)
                        CHK(MPI_Test(&rq, &flag, &st));
                }
            } else {
                CHK(MPI_Mrecv(buf, count, MPI_INT, &msg, &st));
                if (msg != MPI_MESSAGE_NULL)
                    fail("MPI_Mrecv did not consume the message handle");
            }

            int rcount;
            CHK(MPI_Get_count(&st, MPI_INT, &rcount));
            if (st.MPI_SOURCE != pst.MPI_SOURCE || st.MPI_TAG != pst.MPI_TAG || rcount != count)
                fail("round %d: receive got %d/%d/%d, its probe said %d/%d/%d", round,
                     st.MPI_SOURCE, st.MPI_TAG, rcount, pst.MPI_SOURCE, pst.MPI_TAG, count);
            struct source *s = NULL;
            for (int q = 0; q < npeers; q++)
                if (src[q].rank == st.MPI_SOURCE)
                    s = &src[q];
            if (!s || (psrc != MPI_ANY_SOURCE && st.MPI_SOURCE != psrc) ||
                (ptag != MPI_ANY_TAG && st.MPI_TAG != ptag))
                fail("round %d: probe %d/%d matched source %d tag %d", round, psrc,
                     ptag, st.MPI_SOURCE, st.MPI_TAG);
            const int seq = expected_seq(s, ptag);
            const uint64_t h = msg_hash(round, s->rank, g_rank, seq < 0 ? 0 : seq);
            if (seq < 0 || buf[0] != s->rank || buf[1] != seq || buf[2] != st.MPI_TAG ||
                buf[3] != round || st.MPI_TAG != s->tag[seq] || count != msg_len(h))
                fail("round %d: probe %d/%d got (src %d seq %d tag %d round %d, %d ints), "
                     "want seq %d from %d", round, psrc, ptag, buf[0], buf[1], buf[2],
                     buf[3], count, seq, s->rank);
            for (int k = MIN_LEN; k < count; k++)
                if (buf[k] != payload(h, k))
                    fail("round %d: message %d from %d: value %d wrong", round, seq, s->rank, k);
            s->consumed[seq] = 1;
            s->remaining--;
            total_hash += mix64(h ^ (uint64_t)count); /* order-independent */
            free(buf);
        }

        /* Probing MPI_PROC_NULL yields the no-process message at once. */
        {
            MPI_Message msg;
            MPI_Status st;
            int count;
            CHK(MPI_Mprobe(MPI_PROC_NULL, MPI_ANY_TAG, comm, &msg, &st));
            if (msg != MPI_MESSAGE_NO_PROC || st.MPI_SOURCE != MPI_PROC_NULL)
                fail("MPI_Mprobe(MPI_PROC_NULL) gave source %d", st.MPI_SOURCE);
            CHK(MPI_Mrecv(NULL, 0, MPI_INT, &msg, &st));
            CHK(MPI_Get_count(&st, MPI_INT, &count));
            if (msg != MPI_MESSAGE_NULL || st.MPI_SOURCE != MPI_PROC_NULL ||
                st.MPI_TAG != MPI_ANY_TAG || count != 0)
                fail("MPI_Mrecv(MPI_MESSAGE_NO_PROC): source %d tag %d count %d",
                     st.MPI_SOURCE, st.MPI_TAG, count);
        }

        CHK(MPI_Waitall(nsend, sreq, MPI_STATUSES_IGNORE));

        if ((rl + 1) % report_every == 0) {
            uint64_t tot;
            CHK(MPI_Reduce(&total_hash, &tot, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
            if (g_rank == 0)
                printf("round %ld checksum %016llx\n", rl + 1, (unsigned long long)tot);
        }
    }

    /* Every message was owed; none may be left. */
    CHK(MPI_Barrier(MPI_COMM_WORLD));
    for (int c = 0; c < 2; c++) {
        int flag;
        MPI_Status st;
        CHK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comms[c], &flag, &st));
        if (flag)
            fail("stray message from %d tag %d", st.MPI_SOURCE, st.MPI_TAG);
    }
    uint64_t tot;
    CHK(MPI_Reduce(&total_hash, &tot, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
    if (g_rank == 0) {
        printf("mprobe: ranks=%d rounds=%ld checksum=%016llx\n", size, rounds,
               (unsigned long long)tot);
        fflush(stdout);
    }
    for (int i = 0; i < nsend; i++)
        free(sbuf[i]);
    free(sbuf);
    free(sreq);
    free(src);
    CHK(MPI_Comm_free(&comms[0]));
    CHK(MPI_Comm_free(&comms[1]));
    CHK(MPI_Finalize());
    return 0;
}
