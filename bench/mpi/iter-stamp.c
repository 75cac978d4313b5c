/*
 * iter-stamp.c - an iterative MPI job that stamps its own progress, so that a
 * benchmark can see the pause an operation (a migration, a checkpoint) causes
 * as the application sees it.
 *
 * Every iteration: a fixed amount of arithmetic (--work inner-loop updates of
 * a small array), a halo exchange with both ring neighbours (--bytes each way,
 * MPI_Irecv/MPI_Isend + MPI_Waitall), and an MPI_Allreduce that couples all
 * ranks (it also carries the stop decision). So no rank gets ahead of the
 * others by more than one iteration: when any rank stops, rank 0 stops within
 * an iteration.
 *
 * Rank 0 writes a heartbeat line to its stdout (flushed) at most every
 * --beat-ms of its own clock, after the iteration that crossed it:
 *
 *   iter-stamp start np=<n> work=<w> bytes=<b> beat_ms=<m>
 *   beat i=<iteration> t=<ms> gap=<ms>
 *   iter-stamp done iters=<n> seconds=<s> max_gap_ms=<g> mean_iter_ms=<x> check=<hex>
 *
 * t is ms since the start on CLOCK_MONOTONIC; gap is the largest interval
 * between the ends of consecutive iterations since the previous beat line.
 * That is the application's view on its own clock; note that a guest whose
 * vCPUs are stopped (a migration's downtime, a checkpoint) does not see the
 * stopped time on that clock (TCG's TSC, like kvmclock, stops with the VM).
 * So the host should time the arrival of these lines on its own clock: the
 * longest silence there is the pause as anyone outside the VM sees it.
 *
 * The job runs until --seconds (rank 0's clock) have passed, or until the
 * file --stop-file exists (rank 0 looks every 100 ms): then every rank
 * leaves at the same iteration and rank 0 prints the done line, with a
 * checksum of the data that went around (identical for any interruption that
 * lost nothing).
 *
 * Usage:     iter-stamp [--seconds S] [--beat-ms M] [--work W] [--bytes B]
 *                       [--stop-file PATH]
 *            (defaults: 3600 s, 10 ms, 20000, 4096)
 * Supports:  np >= 1 (np 1: no exchange, only the allreduce).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STOP_CHECK_MS 100.0

#include "mpibench.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static long num_arg(const char *flag, const char *v, long min)
{
    char *end = NULL;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || n < min) fail("%s: '%s' is not an integer >= %ld", flag, v ? v : "", min);
    return n;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

int main(int argc, char **argv)
{
    long seconds = 3600, beat_ms = 10, work = 20000, bytes = 4096;
    const char *stop_file = NULL;
    int size;

    CHK(MPI_Init(&argc, &argv));
    CHK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    CHK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
    CHK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--seconds")) seconds = num_arg(a, v, 1), i++;
        else if (!strcmp(a, "--beat-ms")) beat_ms = num_arg(a, v, 1), i++;
        else if (!strcmp(a, "--work")) work = num_arg(a, v, 0), i++;
        else if (!strcmp(a, "--bytes")) bytes = num_arg(a, v, 8), i++;
        else if (!strcmp(a, "--stop-file")) {
            if (!v) fail("--stop-file needs a path");
            stop_file = v;
            i++;
        } else
            fail("unknown argument '%s'; usage: iter-stamp [--seconds S] [--beat-ms M] [--work W] [--bytes B] [--stop-file PATH]", a);
    }
    if (g_rank == 0 && stop_file) unlink(stop_file); /* a leftover from an earlier run stops nothing */

    const int n = (int)(bytes / 8);
    uint64_t *out = calloc((size_t)n, sizeof *out);
    uint64_t *from_left = calloc((size_t)n, sizeof *from_left);
    uint64_t *from_right = calloc((size_t)n, sizeof *from_right);
    double *grid = calloc(256, sizeof *grid);
    if (!out || !from_left || !from_right || !grid) fail("out of memory");
    for (int k = 0; k < 256; k++) grid[k] = (double)(k % 7) / 7.0;
    const int left = (g_rank + size - 1) % size, right = (g_rank + 1) % size;

    if (g_rank == 0) {
        printf("iter-stamp start np=%d work=%ld bytes=%ld beat_ms=%ld\n", size, work, bytes, beat_ms);
        fflush(stdout);
    }
    CHK(MPI_Barrier(MPI_COMM_WORLD));

    const double t0 = now_ms();
    double last_end = t0, last_beat = t0, last_stop_check = t0;
    double gap = 0.0, max_gap = 0.0;
    uint64_t check = 0;
    long it = 0;
    for (;;) {
        it++;
        /* the arithmetic: a fixed relaxation sweep over a small array */
        for (long w = 0; w < work; w++) {
            const int k = (int)(w & 255);
            grid[k] = 0.5 * (grid[(k + 1) & 255] + grid[(k + 255) & 255]) + 1e-9;
        }
        for (int k = 0; k < n; k++) out[k] = mix64((uint64_t)it * 1315423911u + (uint64_t)g_rank * 2654435761u + (uint64_t)k);

        if (size > 1) {
            MPI_Request req[4];
            CHK(MPI_Irecv(from_left, n, MPI_UINT64_T, left, 1, MPI_COMM_WORLD, &req[0]));
            CHK(MPI_Irecv(from_right, n, MPI_UINT64_T, right, 2, MPI_COMM_WORLD, &req[1]));
            CHK(MPI_Isend(out, n, MPI_UINT64_T, right, 1, MPI_COMM_WORLD, &req[2]));
            CHK(MPI_Isend(out, n, MPI_UINT64_T, left, 2, MPI_COMM_WORLD, &req[3]));
            CHK(MPI_Waitall(4, req, MPI_STATUSES_IGNORE));
            /* what arrived must be what the neighbours computed for this iteration */
            for (int k = 0; k < n; k += 97) {
                if (from_left[k] != mix64((uint64_t)it * 1315423911u + (uint64_t)left * 2654435761u + (uint64_t)k) ||
                    from_right[k] != mix64((uint64_t)it * 1315423911u + (uint64_t)right * 2654435761u + (uint64_t)k))
                    fail("iteration %ld: halo word %d is not the neighbours' data", it, k);
            }
        }

        const double t = now_ms();
        uint64_t local[2] = {from_left[0] ^ from_right[n - 1] ^ out[0], 0};
        if (g_rank == 0) {
            if (t - t0 >= (double)seconds * 1e3) local[1] = 1;
            if (stop_file && t - last_stop_check >= STOP_CHECK_MS) {
                last_stop_check = t;
                if (access(stop_file, F_OK) == 0) local[1] = 1;
            }
        }
        uint64_t global[2];
        CHK(MPI_Allreduce(local, global, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD));
        check = mix64(check ^ global[0]);

        const double end = now_ms();
        if (end - last_end > gap) gap = end - last_end;
        if (gap > max_gap) max_gap = gap;
        last_end = end;
        if (g_rank == 0 && end - last_beat >= (double)beat_ms) {
            printf("beat i=%ld t=%.1f gap=%.1f\n", it, end - t0, gap);
            fflush(stdout);
            last_beat = end;
            gap = 0.0;
        }
        if (global[1]) break;
    }
    const double secs = (now_ms() - t0) / 1e3;
    if (g_rank == 0) {
        printf("iter-stamp done iters=%ld seconds=%.1f max_gap_ms=%.1f mean_iter_ms=%.3f check=%016llx\n", it, secs, max_gap,
               secs * 1e3 / (double)it, (unsigned long long)check);
        fflush(stdout);
        if (stop_file) unlink(stop_file);
    }
    free(out);
    free(from_left);
    free(from_right);
    free(grid);
    CHK(MPI_Finalize());
    return 0;
}
