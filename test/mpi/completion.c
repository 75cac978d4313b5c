/*
 * completion.c - send modes, completion calls and request corner cases.
 *
 * Each iteration runs these sections (left/right are ring neighbours):
 *   sendrecv        MPI_Sendrecv right-ward
 *   replace         MPI_Sendrecv_replace left-ward
 *   waitany ..      an exchange with every other rank (Irecv + Isend, sizes
 *   testall         from 64 B to 16 KiB, an MPI_REQUEST_NULL in the array)
 *                   whose receives complete through MPI_Waitany, MPI_Testany,
 *                   MPI_Waitsome, MPI_Testsome or MPI_Testall respectively
 *   ssend           MPI_Ssend into a pre-posted receive; MPI_Issend whose
 *                   receive is posted only after a barrier, checking it has
 *                   not completed before that (synchronous-mode semantics).
 *                   Under the symbio shim (SYMBIO_SEGMENT set) a held
 *                   receiver drains messages into its own buffers, which
 *                   completes a synchronous send early by design; there
 *                   early completions are only counted and reported on
 *                   stderr, never on stdout
 *   bsend           MPI_Bsend of three sizes (up to 64 KiB) from an attached
 *                   buffer, received later
 *   rsend           MPI_Rsend / MPI_Irsend into receives posted before a barrier
 *   procnull        send/receive/probe/sendrecv with MPI_PROC_NULL
 *   cancel          MPI_Cancel of unmatched MPI_Irecvs (one ANY_SOURCE),
 *                   MPI_Test_cancelled must say so
 *   getstatus       MPI_Request_get_status before and after the message can
 *                   exist, then MPI_Wait on the same request
 * and keeps one checksum per section; rank 0 prints their sums over ranks.
 *
 * Usage:     completion [iterations]  (default 2500)
 * Supports:  np >= 2 (the output depends on np).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <string.h>

#include "mpitest.h"

#define DEFAULT_ITERS 2500
#define SMALL 32            /* int64 values in the ring messages */
#define EX_MAX 2048         /* max int64 values in an exchange message */
#define WORK_CHUNK 300L

enum { S_SENDRECV, S_REPLACE, S_WAITANY, S_TESTANY, S_WAITSOME, S_TESTSOME,
       S_TESTALL, S_SSEND, S_BSEND, S_RSEND, S_PROCNULL, S_CANCEL, S_GETSTATUS,
       NSECT };
static const char *const sect_name[NSECT] = {
    "sendrecv", "replace", "waitany", "testany", "waitsome", "testsome",
    "testall", "ssend", "bsend", "rsend", "procnull", "cancel", "getstatus"};

/* Bsend sizes, in int64 values: eager, medium, rendezvous. */
static const int bsend_len[3] = {16, 512, 8192};

static int g_size;
static long g_it;
static uint64_t g_hash[NSECT];

static int64_t val(int sender, int sect, int sub, long k)
{
    return (int64_t)mix64(((uint64_t)sender << 52) ^ ((uint64_t)sect << 46) ^
                          ((uint64_t)sub << 40) ^ ((uint64_t)g_it << 16) ^ (uint64_t)k);
}
static void fill(int64_t *buf, long n, int sender, int sect, int sub)
{
    for (long k = 0; k < n; k++)
        buf[k] = val(sender, sect, sub, k);
}
/* Checks received contents and folds them into the section's checksum. */
static void check_data(int sect, const char *what, const int64_t *buf, long n,
                       int source, int sub)
{
    for (long k = 0; k < n; k++)
        if (buf[k] != val(source, sect, sub, k))
            fail("%s (%s), iteration %ld: value %ld from %d wrong", sect_name[sect],
                 what, g_it, k, source);
    g_hash[sect] = mix64(g_hash[sect] ^ (uint64_t)buf[0] ^ ((uint64_t)n << 32)) +
                   (uint64_t)buf[n - 1];
}
/* Checks the status of a receive, then its contents. */
static void check(int sect, const char *what, const int64_t *buf, long n,
                  const MPI_Status *st, int source, int tag, int sub)
{
    int count;
    CHK(MPI_Get_count(st, MPI_INT64_T, &count));
    if (st->MPI_SOURCE != source || st->MPI_TAG != tag || count != n)
        fail("%s (%s), iteration %ld: source %d tag %d count %d, want %d/%d/%ld",
             sect_name[sect], what, g_it, st->MPI_SOURCE, st->MPI_TAG, count,
             source, tag, n);
    check_data(sect, what, buf, n, source, sub);
}
static void check_null_status(const char *what, const MPI_Status *st)
{
    int count;
    CHK(MPI_Get_count(st, MPI_INT64_T, &count));
    if (st->MPI_SOURCE != MPI_PROC_NULL || st->MPI_TAG != MPI_ANY_TAG || count != 0)
        fail("%s: status source %d tag %d count %d, want MPI_PROC_NULL/MPI_ANY_TAG/0",
             what, st->MPI_SOURCE, st->MPI_TAG, count);
}

/* Length of the exchange message from src to dst: 8..EX_MAX values. */
static long ex_len(int sect, int src, int dst)
{
    return 8 + (long)(mix64(((uint64_t)sect << 40) ^ ((uint64_t)g_it << 16) ^
                            ((uint64_t)src << 8) ^ (uint64_t)dst) % (EX_MAX - 7));
}

/* An exchange with every other rank whose receives complete through the
 * completion call named by sect. The slot of this rank itself holds
 * MPI_REQUEST_NULL, which every completion call must skip. */
static void exchange(int sect, int64_t **rbuf, int64_t **sbuf, MPI_Request *rreq,
                     MPI_Request *sreq, MPI_Status *sts, int *idx)
{
    const int p = g_size, tag = 100 + sect;
    for (int q = 0; q < p; q++) {
        rreq[q] = sreq[q] = MPI_REQUEST_NULL;
        if (q == g_rank)
            continue;
        CHK(MPI_Irecv(rbuf[q], EX_MAX, MPI_INT64_T, q, tag, MPI_COMM_WORLD, &rreq[q]));
    }
    for (int q = 0; q < p; q++) {
        if (q == g_rank)
            continue;
        const long n = ex_len(sect, g_rank, q);
        fill(sbuf[q], n, g_rank, sect, q);
        CHK(MPI_Isend(sbuf[q], (int)n, MPI_INT64_T, q, tag, MPI_COMM_WORLD, &sreq[q]));
    }

    int done = 0;
    char *seen = calloc((size_t)p, 1);
    if (!seen)
        fail("out of memory");
#define GOT(i, stp)                                                              \
    do {                                                                         \
        if ((i) < 0 || (i) >= p || (i) == g_rank || seen[i])                     \
            fail("%s, iteration %ld: bad or repeated index %d", sect_name[sect], \
                 g_it, (i));                                                     \
        if (rreq[i] != MPI_REQUEST_NULL)                                         \
            fail("%s: completed request %d not freed", sect_name[sect], (i));   \
        seen[i] = 1;                                                             \
        done++;                                                                  \
        /* The status is checked now; contents after, in index order. */         \
        int count_;                                                              \
        CHK(MPI_Get_count((stp), MPI_INT64_T, &count_));                         \
        if ((stp)->MPI_SOURCE != (i) || (stp)->MPI_TAG != tag ||                 \
            count_ != ex_len(sect, (i), g_rank))                                 \
            fail("%s, iteration %ld: index %d has source %d tag %d count %d",    \
                 sect_name[sect], g_it, (i), (stp)->MPI_SOURCE, (stp)->MPI_TAG,  \
                 count_);                                                        \
    } while (0)

    switch (sect) {
    case S_WAITANY:
        for (;;) {
            int i;
            MPI_Status st;
            CHK(MPI_Waitany(p, rreq, &i, &st));
            if (i == MPI_UNDEFINED)
                break;
            GOT(i, &st);
        }
        break;
    case S_TESTANY:
        for (long c = 0;; c++) {
            int i, flag;
            MPI_Status st;
            CHK(MPI_Testany(p, rreq, &i, &flag, &st));
            if (flag && i == MPI_UNDEFINED)
                break; /* all inactive */
            if (flag)
                GOT(i, &st);
            else
                work(WORK_CHUNK, (uint64_t)c);
        }
        break;
    case S_WAITSOME:
        for (;;) {
            int out;
            CHK(MPI_Waitsome(p, rreq, &out, idx, sts));
            if (out == MPI_UNDEFINED)
                break;
            if (out < 1)
                fail("MPI_Waitsome returned %d completions", out);
            for (int k = 0; k < out; k++)
                GOT(idx[k], &sts[k]);
        }
        break;
    case S_TESTSOME:
        for (long c = 0;; c++) {
            int out;
            CHK(MPI_Testsome(p, rreq, &out, idx, sts));
            if (out == MPI_UNDEFINED)
                break;
            for (int k = 0; k < out; k++)
                GOT(idx[k], &sts[k]);
            if (out == 0)
                work(WORK_CHUNK, (uint64_t)c);
        }
        break;
    case S_TESTALL: {
        int flag = 0;
        for (long c = 0; !flag; c++) {
            CHK(MPI_Testall(p, rreq, &flag, sts));
            if (!flag)
                work(WORK_CHUNK, (uint64_t)c);
        }
        for (int q = 0; q < p; q++)
            if (q != g_rank)
                GOT(q, &sts[q]);
        break;
    }
    default:
        fail("exchange: bad section %d", sect);
    }
#undef GOT
    if (done != p - 1)
        fail("%s: %d receives completed, want %d", sect_name[sect], done, p - 1);
    free(seen);
    CHK(MPI_Waitall(p, sreq, MPI_STATUSES_IGNORE));
    /* Index order, so the checksum does not depend on completion order. */
    for (int q = 0; q < p; q++)
        if (q != g_rank)
            check_data(sect, "exchange", rbuf[q], ex_len(sect, q, g_rank), q, g_rank);
}

int main(int argc, char **argv)
{
    g_size = init_world(&argc, &argv, 2);
    const long iters = count_arg(argc, argv, DEFAULT_ITERS, "iteration");
    const int p = g_size, left = (g_rank + p - 1) % p, right = (g_rank + 1) % p;
    const int under_shim = getenv("SYMBIO_SEGMENT") != NULL;
    long early_ssend = 0;

    int64_t **rbuf = malloc(sizeof *rbuf * (size_t)p), **sbuf = malloc(sizeof *sbuf * (size_t)p);
    MPI_Request *rreq = malloc(sizeof *rreq * (size_t)p), *sreq = malloc(sizeof *sreq * (size_t)p);
    MPI_Status *sts = malloc(sizeof *sts * (size_t)p);
    int *idx = malloc(sizeof *idx * (size_t)p);
    if (!rbuf || !sbuf || !rreq || !sreq || !sts || !idx)
        fail("out of memory");
    for (int q = 0; q < p; q++)
        if (!(rbuf[q] = malloc(sizeof(int64_t) * EX_MAX)) ||
            !(sbuf[q] = malloc(sizeof(int64_t) * EX_MAX)))
            fail("out of memory");
    int64_t a[SMALL], b[SMALL], big[8192], bigr[8192];

    /* Room for three iterations of Bsends: a rank can be at most two
     * iterations ahead of its right neighbour (the all-rank exchanges
     * hold it back), and space is reclaimed only after delivery. */
    int bsize = 0;
    for (int k = 0; k < 3; k++) {
        int ps;
        CHK(MPI_Pack_size(bsend_len[k], MPI_INT64_T, MPI_COMM_WORLD, &ps));
        bsize += ps + MPI_BSEND_OVERHEAD;
    }
    bsize *= 3;
    char *battach = malloc((size_t)bsize);
    if (!battach)
        fail("out of memory");
    CHK(MPI_Buffer_attach(battach, bsize));

    for (g_it = 0; g_it < iters; g_it++) {
        MPI_Status st, st2;
        MPI_Request rq, rq2;
        int flag;

        /* sendrecv: right-ward shift. */
        fill(a, SMALL, g_rank, S_SENDRECV, 0);
        CHK(MPI_Sendrecv(a, SMALL, MPI_INT64_T, right, 10, b, SMALL, MPI_INT64_T, left,
                         10, MPI_COMM_WORLD, &st));
        check(S_SENDRECV, "MPI_Sendrecv", b, SMALL, &st, left, 10, 0);

        /* replace: left-ward shift in one buffer. */
        fill(a, SMALL, g_rank, S_REPLACE, 0);
        CHK(MPI_Sendrecv_replace(a, SMALL, MPI_INT64_T, left, 11, right, 11,
                                 MPI_COMM_WORLD, &st));
        check(S_REPLACE, "MPI_Sendrecv_replace", a, SMALL, &st, right, 11, 0);

        for (int s = S_WAITANY; s <= S_TESTALL; s++)
            exchange(s, rbuf, sbuf, rreq, sreq, sts, idx);

        /* ssend (1): into a receive the neighbour posted beforehand. */
        CHK(MPI_Irecv(b, SMALL, MPI_INT64_T, left, 30, MPI_COMM_WORLD, &rq));
        fill(a, SMALL, g_rank, S_SSEND, 0);
        CHK(MPI_Ssend(a, SMALL, MPI_INT64_T, right, 30, MPI_COMM_WORLD));
        CHK(MPI_Wait(&rq, &st));
        check(S_SSEND, "MPI_Ssend", b, SMALL, &st, left, 30, 0);
        /* ssend (2): the right neighbour posts its receive only after the
         * barrier, which we have not entered yet, so the Issend cannot be
         * complete here. */
        fill(a, SMALL, g_rank, S_SSEND, 1);
        CHK(MPI_Issend(a, SMALL, MPI_INT64_T, right, 31, MPI_COMM_WORLD, &rq));
        for (int c = 0; c < 3 && rq != MPI_REQUEST_NULL; c++) {
            work(WORK_CHUNK, (uint64_t)c);
            CHK(MPI_Test(&rq, &flag, MPI_STATUS_IGNORE));
            if (flag && !under_shim)
                fail("ssend, iteration %ld: MPI_Issend completed before the "
                     "receiver posted a matching receive", g_it);
            early_ssend += flag;
        }
        CHK(MPI_Barrier(MPI_COMM_WORLD));
        CHK(MPI_Recv(b, SMALL, MPI_INT64_T, left, 31, MPI_COMM_WORLD, &st));
        check(S_SSEND, "MPI_Issend", b, SMALL, &st, left, 31, 1);
        CHK(MPI_Wait(&rq, MPI_STATUS_IGNORE));

        /* bsend: all three complete locally before anything is received. */
        for (int k = 0; k < 3; k++) {
            fill(big, bsend_len[k], g_rank, S_BSEND, k);
            CHK(MPI_Bsend(big, bsend_len[k], MPI_INT64_T, right, 40 + k, MPI_COMM_WORLD));
        }
        for (int k = 2; k >= 0; k--) { /* reverse order: tags tell them apart */
            CHK(MPI_Recv(bigr, bsend_len[k], MPI_INT64_T, left, 40 + k, MPI_COMM_WORLD, &st));
            check(S_BSEND, "MPI_Bsend", bigr, bsend_len[k], &st, left, 40 + k, k);
        }

        /* rsend: ready mode is legal only because the barrier orders our
         * send after the neighbour's receive was posted. */
        CHK(MPI_Irecv(b, SMALL, MPI_INT64_T, left, 50, MPI_COMM_WORLD, &rq));
        CHK(MPI_Irecv(bigr, 4096, MPI_INT64_T, left, 51, MPI_COMM_WORLD, &rq2));
        CHK(MPI_Barrier(MPI_COMM_WORLD));
        fill(a, SMALL, g_rank, S_RSEND, 0);
        CHK(MPI_Rsend(a, SMALL, MPI_INT64_T, right, 50, MPI_COMM_WORLD));
        MPI_Request rs;
        fill(big, 4096, g_rank, S_RSEND, 1);
        CHK(MPI_Irsend(big, 4096, MPI_INT64_T, right, 51, MPI_COMM_WORLD, &rs));
        CHK(MPI_Wait(&rq, &st));
        check(S_RSEND, "MPI_Rsend", b, SMALL, &st, left, 50, 0);
        CHK(MPI_Wait(&rq2, &st));
        check(S_RSEND, "MPI_Irsend", bigr, 4096, &st, left, 51, 1);
        CHK(MPI_Wait(&rs, MPI_STATUS_IGNORE));

        /* procnull: everything completes at once with the null status. */
        CHK(MPI_Send(a, SMALL, MPI_INT64_T, MPI_PROC_NULL, 60, MPI_COMM_WORLD));
        CHK(MPI_Recv(b, SMALL, MPI_INT64_T, MPI_PROC_NULL, 60, MPI_COMM_WORLD, &st));
        check_null_status("MPI_Recv(MPI_PROC_NULL)", &st);
        MPI_Request pn[2];
        MPI_Status pst[2];
        CHK(MPI_Isend(a, SMALL, MPI_INT64_T, MPI_PROC_NULL, 61, MPI_COMM_WORLD, &pn[0]));
        CHK(MPI_Irecv(b, SMALL, MPI_INT64_T, MPI_PROC_NULL, 61, MPI_COMM_WORLD, &pn[1]));
        CHK(MPI_Waitall(2, pn, pst));
        check_null_status("MPI_Irecv(MPI_PROC_NULL)", &pst[1]);
        CHK(MPI_Sendrecv(a, SMALL, MPI_INT64_T, MPI_PROC_NULL, 62, b, SMALL, MPI_INT64_T,
                         MPI_PROC_NULL, 62, MPI_COMM_WORLD, &st));
        check_null_status("MPI_Sendrecv(MPI_PROC_NULL)", &st);
        CHK(MPI_Probe(MPI_PROC_NULL, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
        check_null_status("MPI_Probe(MPI_PROC_NULL)", &st);
        CHK(MPI_Iprobe(MPI_PROC_NULL, 63, MPI_COMM_WORLD, &flag, &st));
        if (!flag)
            fail("MPI_Iprobe(MPI_PROC_NULL) found nothing");
        check_null_status("MPI_Iprobe(MPI_PROC_NULL)", &st);
        g_hash[S_PROCNULL] = mix64(g_hash[S_PROCNULL] + (uint64_t)g_it);

        /* cancel: nobody ever sends on tags 98/99. */
        CHK(MPI_Irecv(b, SMALL, MPI_INT64_T, right, 99, MPI_COMM_WORLD, &rq));
        CHK(MPI_Irecv(bigr, SMALL, MPI_INT64_T, MPI_ANY_SOURCE, 98, MPI_COMM_WORLD, &rq2));
        CHK(MPI_Cancel(&rq));
        CHK(MPI_Cancel(&rq2));
        CHK(MPI_Wait(&rq, &st));
        CHK(MPI_Wait(&rq2, &st2));
        int c1, c2;
        CHK(MPI_Test_cancelled(&st, &c1));
        CHK(MPI_Test_cancelled(&st2, &c2));
        if (!c1 || !c2)
            fail("cancel, iteration %ld: MPI_Test_cancelled says %d/%d", g_it, c1, c2);
        g_hash[S_CANCEL] = mix64(g_hash[S_CANCEL] + (uint64_t)(c1 + c2));

        /* getstatus: the left neighbour sends only after the barrier, which
         * we have not entered, so nothing can have arrived yet. */
        CHK(MPI_Irecv(b, SMALL, MPI_INT64_T, left, 70, MPI_COMM_WORLD, &rq));
        CHK(MPI_Request_get_status(rq, &flag, &st));
        if (flag)
            fail("getstatus, iteration %ld: receive complete before its message was sent", g_it);
        CHK(MPI_Barrier(MPI_COMM_WORLD));
        fill(a, SMALL, g_rank, S_GETSTATUS, 0);
        CHK(MPI_Send(a, SMALL, MPI_INT64_T, right, 70, MPI_COMM_WORLD));
        for (long c = 0; !flag; c++) {
            CHK(MPI_Request_get_status(rq, &flag, &st));
            if (!flag)
                work(WORK_CHUNK, (uint64_t)c);
        }
        if (rq == MPI_REQUEST_NULL)
            fail("MPI_Request_get_status freed the request");
        check(S_GETSTATUS, "MPI_Request_get_status", b, SMALL, &st, left, 70, 0);
        CHK(MPI_Wait(&rq, &st2)); /* still needed to free it */
        check(S_GETSTATUS, "MPI_Wait after get_status", b, SMALL, &st2, left, 70, 0);
        rq = MPI_REQUEST_NULL;
        CHK(MPI_Request_get_status(rq, &flag, &st));
        if (!flag)
            fail("MPI_Request_get_status(MPI_REQUEST_NULL) not complete");
    }

    if (early_ssend)
        fprintf(stderr, "completion: rank %d: %ld MPI_Issend completed before the "
                "receive was posted (allowed only under the symbio shim)\n",
                g_rank, early_ssend);

    void *detached;
    int dsize;
    CHK(MPI_Buffer_detach(&detached, &dsize)); /* waits for pending Bsends */
    if (detached != battach || dsize != bsize)
        fail("MPI_Buffer_detach returned another buffer");

    uint64_t tot[NSECT];
    CHK(MPI_Reduce(g_hash, tot, NSECT, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
    if (g_rank == 0) {
        uint64_t all = 0;
        for (int s = 0; s < NSECT; s++) {
            printf("%-10s %016llx\n", sect_name[s], (unsigned long long)tot[s]);
            all = mix64(all ^ tot[s]);
        }
        printf("completion: ranks=%d iterations=%ld checksum=%016llx\n", p, iters,
               (unsigned long long)all);
        fflush(stdout);
    }
    for (int q = 0; q < p; q++) {
        free(rbuf[q]);
        free(sbuf[q]);
    }
    free(rbuf);
    free(sbuf);
    free(rreq);
    free(sreq);
    free(sts);
    free(idx);
    free(battach);
    CHK(MPI_Finalize());
    return 0;
}
