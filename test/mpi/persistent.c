/*
 * persistent.c - persistent point-to-point requests in a neighbour exchange.
 *
 * Every rank sets up, once, persistent requests to both ring neighbours:
 * a small (512 B) message each way and a big (128 KiB, rendezvous-sized) one
 * to the right, with MPI_Send_init/MPI_Recv_init. Each iteration refills the
 * send buffers and runs one of:
 *   even iterations: MPI_Startall on all requests + computation + MPI_Waitall;
 *   odd iterations:  MPI_Start on each (receives first) and a loop of MPI_Test
 *                    on each request between slices of computation; every
 *                    fourth one finishes with MPI_Testall instead;
 * (the big pair only every BIG_EVERY iterations), then checks what arrived.
 * At the end the inactive requests are released with MPI_Request_free.
 *
 * Usage:     persistent [iterations]  (default 15000)
 * Supports:  np >= 2 (the output depends on np).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <string.h>

#include "mpitest.h"

#define DEFAULT_ITERS 15000
#define SMALL_N 64          /* int64 values: 512 bytes */
#define BIG_N 16384         /* int64 values: 128 KiB */
#define BIG_EVERY 4
#define WORK_CHUNK 1500L
#define WORK_CHUNKS 6

enum { TAG_TO_RIGHT = 1, TAG_TO_LEFT = 2, TAG_BIG = 3 };
/* Request slots: the small ones first so MPI_Startall can take a prefix. */
enum { R_RECV_L, R_RECV_R, R_SEND_R, R_SEND_L, R_BIG_RECV, R_BIG_SEND, NREQ };

/* Value k of what `sender` sends on `tag` in iteration it. */
static int64_t val(int sender, int tag, long it, long k)
{
    return (int64_t)mix64(((uint64_t)sender << 48) ^ ((uint64_t)tag << 40) ^
                          ((uint64_t)it << 20) ^ (uint64_t)k);
}

int main(int argc, char **argv)
{
    const int size = init_world(&argc, &argv, 2);
    const long iters = count_arg(argc, argv, DEFAULT_ITERS, "iteration");
    const int right = (g_rank + 1) % size, left = (g_rank + size - 1) % size;

    static int64_t sr[SMALL_N], sl[SMALL_N], rl[SMALL_N], rr[SMALL_N];
    int64_t *bs = malloc(sizeof *bs * BIG_N), *br = malloc(sizeof *br * BIG_N);
    if (!bs || !br)
        fail("out of memory");

    /* Tags name the direction, so with 2 ranks (left == right) the two small
     * messages still match the right receives. */
    MPI_Request req[NREQ];
    CHK(MPI_Recv_init(rl, SMALL_N, MPI_INT64_T, left, TAG_TO_RIGHT, MPI_COMM_WORLD, &req[R_RECV_L]));
    CHK(MPI_Recv_init(rr, SMALL_N, MPI_INT64_T, right, TAG_TO_LEFT, MPI_COMM_WORLD, &req[R_RECV_R]));
    CHK(MPI_Send_init(sr, SMALL_N, MPI_INT64_T, right, TAG_TO_RIGHT, MPI_COMM_WORLD, &req[R_SEND_R]));
    CHK(MPI_Send_init(sl, SMALL_N, MPI_INT64_T, left, TAG_TO_LEFT, MPI_COMM_WORLD, &req[R_SEND_L]));
    CHK(MPI_Recv_init(br, BIG_N, MPI_INT64_T, left, TAG_BIG, MPI_COMM_WORLD, &req[R_BIG_RECV]));
    CHK(MPI_Send_init(bs, BIG_N, MPI_INT64_T, right, TAG_BIG, MPI_COMM_WORLD, &req[R_BIG_SEND]));

    /* What each request must report: source, tag, count (receives only). */
    const int want_src[NREQ] = {left, right, -1, -1, left, -1};
    const int want_tag[NREQ] = {TAG_TO_RIGHT, TAG_TO_LEFT, 0, 0, TAG_BIG, 0};
    const int want_cnt[NREQ] = {SMALL_N, SMALL_N, 0, 0, BIG_N, 0};

    uint64_t hash = 0;
    const long report_every = iters >= 10 ? iters / 10 : 1;
    for (long it = 0; it < iters; it++) {
        const int big = it % BIG_EVERY == 0;
        const int n = big ? NREQ : R_BIG_RECV; /* active request count */
        MPI_Status st[NREQ];

        /* Buffers of a persistent send may change only while it is inactive. */
        for (long k = 0; k < SMALL_N; k++) {
            sr[k] = val(g_rank, TAG_TO_RIGHT, it, k);
            sl[k] = val(g_rank, TAG_TO_LEFT, it, k);
        }
        if (big)
            for (long k = 0; k < BIG_N; k++)
                bs[k] = val(g_rank, TAG_BIG, it, k);

        if (it % 2 == 0) {
            CHK(MPI_Startall(n, req));
            for (int c = 0; c < WORK_CHUNKS; c++)
                work(WORK_CHUNK, (uint64_t)c);
            CHK(MPI_Waitall(n, req, st));
        } else if (it % 4 == 1) {
            /* Start one by one, then poll each with MPI_Test. */
            for (int i = 0; i < n; i++)
                CHK(MPI_Start(&req[i]));
            int done[NREQ] = {0}, left_to_do = n;
            for (int c = 0; left_to_do > 0; c++) {
                if (c < WORK_CHUNKS)
                    work(WORK_CHUNK, (uint64_t)c);
                for (int i = 0; i < n; i++)
                    if (!done[i]) {
                        CHK(MPI_Test(&req[i], &done[i], &st[i]));
                        if (done[i])
                            left_to_do--;
                    }
            }
        } else {
            for (int i = 0; i < n; i++)
                CHK(MPI_Start(&req[i]));
            int flag = 0;
            for (int c = 0; !flag; c++) {
                if (c < WORK_CHUNKS)
                    work(WORK_CHUNK, (uint64_t)c);
                CHK(MPI_Testall(n, req, &flag, st));
            }
        }

        for (int i = 0; i < n; i++) {
            /* Completing a persistent request must leave it allocated. */
            if (req[i] == MPI_REQUEST_NULL)
                fail("iteration %ld: persistent request %d was freed", it, i);
            if (want_src[i] < 0)
                continue;
            int count;
            CHK(MPI_Get_count(&st[i], MPI_INT64_T, &count));
            if (st[i].MPI_SOURCE != want_src[i] || st[i].MPI_TAG != want_tag[i] ||
                count != want_cnt[i])
                fail("iteration %ld: request %d: source %d tag %d count %d, want %d/%d/%d",
                     it, i, st[i].MPI_SOURCE, st[i].MPI_TAG, count, want_src[i],
                     want_tag[i], want_cnt[i]);
        }
        for (long k = 0; k < SMALL_N; k++) {
            if (rl[k] != val(left, TAG_TO_RIGHT, it, k) ||
                rr[k] != val(right, TAG_TO_LEFT, it, k))
                fail("iteration %ld: small message value %ld wrong", it, k);
            hash = mix64(hash ^ (uint64_t)rl[k]) + (uint64_t)rr[k];
        }
        if (big) {
            for (long k = 0; k < BIG_N; k++)
                if (br[k] != val(left, TAG_BIG, it, k))
                    fail("iteration %ld: big message value %ld wrong", it, k);
            hash = mix64(hash ^ (uint64_t)br[0] ^ (uint64_t)br[BIG_N - 1]);
        }

        if ((it + 1) % report_every == 0) {
            uint64_t tot;
            CHK(MPI_Reduce(&hash, &tot, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
            if (g_rank == 0)
                printf("iteration %ld checksum %016llx\n", it + 1, (unsigned long long)tot);
        }
    }

    for (int i = 0; i < NREQ; i++) {
        CHK(MPI_Request_free(&req[i]));
        if (req[i] != MPI_REQUEST_NULL)
            fail("MPI_Request_free left request %d set", i);
    }
    uint64_t tot;
    CHK(MPI_Reduce(&hash, &tot, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
    if (g_rank == 0) {
        printf("persistent: ranks=%d iterations=%ld checksum=%016llx\n", size, iters,
               (unsigned long long)tot);
        fflush(stdout);
    }
    free(bs);
    free(br);
    CHK(MPI_Finalize());
    return 0;
}
