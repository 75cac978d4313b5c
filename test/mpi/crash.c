/*
 * crash.c - a job that can lose a rank, for testing rank-death events.
 *
 * All ranks loop: a slice of computation, then an MPI_Allreduce that every
 * rank checks. With the argument "die", the last rank kills itself with
 * SIGKILL (no MPI_Abort, no chance to clean up, like an OOM kill) about one
 * second after start; the job then fails as mpirun decides (non-zero exit).
 * In that mode the loop has no iteration limit, so the rank dies whatever the
 * machine's speed.
 * Otherwise it runs a fixed number of iterations (~5 s) and rank 0 prints a
 * checksum that does not depend on timing.
 *
 * Usage:     crash [die | iterations]   (default 2000 iterations, ~5 s)
 * Supports:  np >= 1 for a normal run; "die" needs np >= 2 so that someone
 *            survives to notice.
 * Exit:      0 on a normal run; "die" never exits 0.
 */
#define _POSIX_C_SOURCE 200809L /* SIGKILL is POSIX, not ISO C */
#include <signal.h>
#include <string.h>

#include "mpitest.h"

#define DEFAULT_ITERS 2000
#define WORK_ROUNDS 200000L /* computation per iteration */
#define DIE_AFTER 1.0       /* seconds */
#define DIE_LIMIT 60.0      /* "die" mode gives up if still alive by then */

int main(int argc, char **argv)
{
    long iters = DEFAULT_ITERS;
    int die = 0;

    const int size = init_world(&argc, &argv, 1);
    if (argc > 1) {
        if (strcmp(argv[1], "die") == 0) {
            die = 1;
            if (size < 2)
                fail("\"die\" needs at least 2 ranks");
        } else if (!parse_count(argv[1], &iters)) {
            fail("bad argument '%s' (want \"die\" or an iteration count)", argv[1]);
        }
    }

    const double t0 = MPI_Wtime();
    uint64_t hash = 0;
    for (long it = 0; die || it < iters; it++) {
        /* Reduced values are kept below 2^40 so the sum is exact. */
        const int64_t mine =
            (int64_t)(spin(WORK_ROUNDS, ((uint64_t)g_rank << 32) ^ (uint64_t)it) >> 24);
        int64_t sum = 0, want = 0;
        if (die && g_rank == size - 1 && MPI_Wtime() - t0 >= DIE_AFTER) {
            fprintf(stderr, "crash: rank %d raising SIGKILL at iteration %ld\n", g_rank, it);
            fflush(stderr);
            raise(SIGKILL);
        }
        if (die && MPI_Wtime() - t0 > DIE_LIMIT)
            fail("the dying rank is still alive after %.0f s", DIE_LIMIT);
        CHK(MPI_Allreduce(&mine, &sum, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
        /* Every rank recomputes the others' contributions only now and then:
         * enough to catch a wrong sum without doubling the work. */
        if (it % 100 == 0) {
            for (int q = 0; q < size; q++)
                want += (int64_t)(spin(WORK_ROUNDS, ((uint64_t)q << 32) ^ (uint64_t)it) >> 24);
            if (sum != want)
                fail("iteration %ld: Allreduce gave %lld, want %lld", it,
                     (long long)sum, (long long)want);
        }
        hash = mix64(hash ^ (uint64_t)sum);
    }
    if (g_rank == 0) {
        printf("crash: ranks=%d iterations=%ld checksum=%016llx\n", size, iters,
               (unsigned long long)hash);
        fflush(stdout);
    }
    CHK(MPI_Finalize());
    return 0;
}
