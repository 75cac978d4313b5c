/*
 * rma.c - one-sided communication with fence synchronisation.
 *
 * One-sided RMA windows are out of scope for the symbio shim (it should say
 * so at run time rather than fail silently); this program checks that a job
 * using them still runs correctly under it. Each iteration, in fence epochs
 * on a window from MPI_Win_create:
 *   epoch 1: every rank MPI_Puts a block into its right neighbour's window
 *            and MPI_Accumulates (MPI_SUM) a block into rank 0's window;
 *   epoch 2: every rank MPI_Gets the block its left neighbour received.
 * After each epoch the results are checked against what they must be.
 *
 * Usage:     rma [iterations]        (default 3000)
 * Supports:  np >= 2 (the output depends on np).
 * Open MPI 4.1 note: its default one-sided component (osc/rdma) needs a
 * transport with RDMA (vader here). With `--mca btl tcp,self` (as in the VM
 * cluster) or a single rank, MPI_Win_create fails with MPI_ERR_WIN; with
 * tcp, adding `--mca osc pt2pt` makes it work.
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <string.h>

#include "mpitest.h"

#define DEFAULT_ITERS 3000
#define BLOCK 1024 /* int64 values per block */
#define WORK_ROUNDS 60000L /* computation per iteration (~0.3 ms) */

/* Kept below 2^40 so accumulated sums stay exact. */
static int64_t val(int what, int r, long it, long k)
{
    return (int64_t)(mix64(((uint64_t)what << 60) ^ ((uint64_t)r << 40) ^
                           ((uint64_t)it << 16) ^ (uint64_t)k) >> 24);
}

int main(int argc, char **argv)
{
    const int size = init_world(&argc, &argv, 2);
    const long iters = count_arg(argc, argv, DEFAULT_ITERS, "iteration");
    const int right = (g_rank + 1) % size, left = (g_rank + size - 1) % size;

    /* Window layout: [put target: BLOCK][accumulate target: BLOCK]. */
    int64_t *base = calloc(2 * BLOCK, sizeof *base);
    int64_t *src = malloc(sizeof *src * BLOCK), *acc = malloc(sizeof *acc * BLOCK),
            *got = malloc(sizeof *got * BLOCK);
    if (!base || !src || !acc || !got)
        fail("out of memory");
    MPI_Win win;
    CHK(MPI_Win_create(base, (MPI_Aint)(2 * BLOCK * sizeof *base), (int)sizeof *base,
                       MPI_INFO_NULL, MPI_COMM_WORLD, &win));
    CHK(MPI_Win_set_errhandler(win, MPI_ERRORS_RETURN));

    uint64_t hash = 0;
    const long report_every = iters >= 10 ? iters / 10 : 1;
    CHK(MPI_Win_fence(MPI_MODE_NOPRECEDE, win));
    for (long it = 0; it < iters; it++) {
        /* Local stores to the window are legal here: the previous fence
         * ended all access to it. */
        if (g_rank == 0)
            memset(base + BLOCK, 0, BLOCK * sizeof *base);
        for (long k = 0; k < BLOCK; k++) {
            src[k] = val(1, g_rank, it, k);
            acc[k] = val(2, g_rank, it, k);
        }
        CHK(MPI_Win_fence(0, win)); /* zeroing done before anyone accumulates */

        CHK(MPI_Put(src, BLOCK, MPI_INT64_T, right, 0, BLOCK, MPI_INT64_T, win));
        CHK(MPI_Accumulate(acc, BLOCK, MPI_INT64_T, 0, BLOCK, BLOCK, MPI_INT64_T,
                           MPI_SUM, win));
        CHK(MPI_Win_fence(MPI_MODE_NOSTORE, win));

        for (long k = 0; k < BLOCK; k++)
            if (base[k] != val(1, left, it, k))
                fail("iteration %ld: put from %d, value %ld wrong", it, left, k);
        hash = mix64(hash ^ (uint64_t)base[0]) + (uint64_t)base[BLOCK - 1];
        if (g_rank == 0) {
            for (long k = 0; k < BLOCK; k++) {
                int64_t want = 0;
                for (int q = 0; q < size; q++)
                    want += val(2, q, it, k);
                if (base[BLOCK + k] != want)
                    fail("iteration %ld: accumulate value %ld: got %lld want %lld", it,
                         k, (long long)base[BLOCK + k], (long long)want);
            }
            hash = mix64(hash ^ (uint64_t)base[BLOCK]);
        }

        /* The left neighbour's put target holds what its left neighbour put. */
        CHK(MPI_Get(got, BLOCK, MPI_INT64_T, left, 0, BLOCK, MPI_INT64_T, win));
        CHK(MPI_Win_fence(MPI_MODE_NOSTORE | MPI_MODE_NOPUT, win));
        const int ll = (left + size - 1) % size;
        for (long k = 0; k < BLOCK; k++)
            if (got[k] != val(1, ll, it, k))
                fail("iteration %ld: get from %d, value %ld wrong", it, left, k);
        /* Computation between epochs, as an application would do; its
         * result goes into the checksum so it cannot be optimised away. */
        hash = mix64(hash ^ (uint64_t)got[BLOCK / 2]) + spin(WORK_ROUNDS, (uint64_t)got[0]);

        if ((it + 1) % report_every == 0) {
            uint64_t tot;
            CHK(MPI_Reduce(&hash, &tot, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
            if (g_rank == 0)
                printf("iteration %ld checksum %016llx\n", it + 1, (unsigned long long)tot);
        }
    }
    CHK(MPI_Win_fence(MPI_MODE_NOSUCCEED, win));
    CHK(MPI_Win_free(&win));

    uint64_t tot;
    CHK(MPI_Reduce(&hash, &tot, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
    if (g_rank == 0) {
        printf("rma: ranks=%d iterations=%ld checksum=%016llx\n", size, iters,
               (unsigned long long)tot);
        fflush(stdout);
    }
    free(base);
    free(src);
    free(acc);
    free(got);
    CHK(MPI_Finalize());
    return 0;
}
