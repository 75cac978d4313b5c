/*
 * exit_with.c - a job that ends the way it is told: one rank exits with a
 * given code, or dies of a given signal, so tests can check that the
 * launcher passes the job's exit status through exactly as mpirun does.
 *
 * Every rank first meets the others in an MPI_Barrier (so the whole job is
 * up, and every rank has attached to the shim when there is one). Then:
 *   exit N [RANK]    every rank calls MPI_Finalize; rank RANK (default: the
 *                    last one) then exits with code N, the others with 0.
 *   signal N [RANK]  rank RANK raises signal N (no MPI_Finalize, no
 *                    MPI_Abort); the others wait in a second barrier that
 *                    never completes, until mpirun stops them.
 * With the environment variable EXIT_WITH_GATE=<path> (the same in every
 * rank), the ranks wait after the first barrier until <path> exists, calling
 * MPI all the while (rank 0 looks every 10 ms and broadcasts the answer): a
 * test can keep the job running, quiescable, for as long as it needs.
 * Rank 0 prints "exit_with: ranks=<n>" on stdout after the first barrier.
 *
 * Usage:     exit_with exit|signal N [RANK]
 * Supports:  np >= 1.
 * Exit:      as told (a signal: as mpirun reports it).
 */
#define _POSIX_C_SOURCE 200809L /* raise()/nanosleep are POSIX */
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mpitest.h"

int main(int argc, char **argv)
{
    const int size = init_world(&argc, &argv, 1);
    long n = 0, who = size - 1;
    if (argc < 3 || (strcmp(argv[1], "signal") != 0 && strcmp(argv[1], "exit") != 0))
        fail("usage: exit_with exit|signal N [RANK]");
    const int sig = strcmp(argv[1], "signal") == 0;
    if (!parse_count(argv[2], &n) || n > 255)
        fail("bad N '%s' (want 1..255)", argv[2]);
    if (argc > 3) {
        char *end;
        who = strtol(argv[3], &end, 10);
        if (*end != '\0' || who < 0 || who >= size)
            fail("bad RANK '%s' (want 0..%d)", argv[3], size - 1);
    }

    CHK(MPI_Barrier(MPI_COMM_WORLD));
    if (g_rank == 0) {
        printf("exit_with: ranks=%d\n", size);
        fflush(stdout);
    }
    /* The gate: every 10 ms rank 0 looks for the file and tells everyone.
     * Every rank keeps calling MPI meanwhile, so the job can be quiesced
     * while it waits. */
    const char *gate = getenv("EXIT_WITH_GATE");
    const struct timespec tick = {0, 10 * 1000 * 1000};
    for (int open = !(gate && *gate); !open;) {
        if (g_rank == 0) {
            open = access(gate, F_OK) == 0;
            if (!open)
                nanosleep(&tick, NULL);
        }
        CHK(MPI_Bcast(&open, 1, MPI_INT, 0, MPI_COMM_WORLD));
    }

    if (sig) {
        if (g_rank == who) {
            fprintf(stderr, "exit_with: rank %d raising signal %ld\n", g_rank, n);
            fflush(stderr);
            raise((int)n);
            fail("still alive after signal %ld", n);
        }
        CHK(MPI_Barrier(MPI_COMM_WORLD)); /* never completes: mpirun ends us */
        fail("the barrier after rank %ld's death completed", who);
    }
    CHK(MPI_Finalize());
    return g_rank == who ? (int)n : 0;
}
