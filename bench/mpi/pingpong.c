/*
 * pingpong.c - MPI_Send/MPI_Recv latency and bandwidth between ranks 0 and 1.
 *
 * Rank 0 sends <bytes> to rank 1, which sends them back; <warmup> untimed
 * round trips come first, then <iterations> timed ones. Other ranks only wait
 * in the final barrier, polling it gently (MPI_Ibarrier + MPI_Test + 1 ms
 * sleeps) so that, oversubscribed, they do not steal the CPU from the pair
 * being measured. Rank 0 prints one JSON line:
 *   {"bytes":N,"iterations":N,"latency_us":X,"bandwidth_MBps":Y}
 * latency_us is half the mean round-trip time; bandwidth_MBps is bytes moved
 * one way per second of that latency, in 10^6 bytes per second.
 *
 * Usage:     pingpong [bytes [iterations [warmup]]]   (default 8 10000 1000)
 * Supports:  np >= 2.
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TAG_PING 1
#define TAG_PONG 2

#include "mpibench.h"

static long arg(int argc, char **argv, int i, long dflt, long min)
{
    if (argc <= i)
        return dflt;
    char *end;
    long v = strtol(argv[i], &end, 10);
    if (*end != '\0' || v < min || v > 1L << 30)
        fail("bad argument %d '%s' (usage: pingpong [bytes [iterations [warmup]]])", i,
             argv[i]);
    return v;
}

/* One round trip; checks that the full message came back. */
static void round_trip(char *buf, int bytes, int peer)
{
    MPI_Status st;
    int count;
    if (g_rank == 0) {
        CHK(MPI_Send(buf, bytes, MPI_BYTE, peer, TAG_PING, MPI_COMM_WORLD));
        CHK(MPI_Recv(buf, bytes, MPI_BYTE, peer, TAG_PONG, MPI_COMM_WORLD, &st));
    } else {
        CHK(MPI_Recv(buf, bytes, MPI_BYTE, peer, TAG_PING, MPI_COMM_WORLD, &st));
        CHK(MPI_Send(buf, bytes, MPI_BYTE, peer, TAG_PONG, MPI_COMM_WORLD));
    }
    CHK(MPI_Get_count(&st, MPI_BYTE, &count));
    if (count != bytes)
        fail("received %d bytes, want %d", count, bytes);
}

int main(int argc, char **argv)
{
    int size;
    CHK(MPI_Init(&argc, &argv));
    CHK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    CHK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
    CHK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    if (size < 2)
        fail("needs at least 2 ranks, got %d", size);
    const int bytes = (int)arg(argc, argv, 1, 8, 0);
    const long iters = arg(argc, argv, 2, 10000, 1);
    const long warmup = arg(argc, argv, 3, 1000, 0);

    /* A communicator of just the pair, to start the timed loop together.
     * Idle ranks take part with MPI_UNDEFINED and get none. */
    MPI_Comm pair;
    CHK(MPI_Comm_split(MPI_COMM_WORLD, g_rank <= 1 ? 0 : MPI_UNDEFINED, g_rank, &pair));
    if ((g_rank <= 1) != (pair != MPI_COMM_NULL))
        fail("MPI_Comm_split gave the wrong communicator");

    if (g_rank <= 1) {
        const int peer = 1 - g_rank;
        char *buf = malloc(bytes > 0 ? (size_t)bytes : 1);
        if (!buf)
            fail("out of memory");
        for (int i = 0; i < bytes; i++)
            buf[i] = (char)(i * 31 + 7);

        for (long i = 0; i < warmup; i++)
            round_trip(buf, bytes, peer);
        /* Start both ranks together so rank 0 does not time rank 1's lag. */
        CHK(MPI_Barrier(pair));
        const double t0 = MPI_Wtime();
        for (long i = 0; i < iters; i++)
            round_trip(buf, bytes, peer);
        const double elapsed = MPI_Wtime() - t0;
        CHK(MPI_Comm_free(&pair));

        /* The payload bounced back and forth untouched. */
        for (int i = 0; i < bytes; i++)
            if (buf[i] != (char)(i * 31 + 7))
                fail("payload corrupted at byte %d", i);
        if (g_rank == 0) {
            const double latency = elapsed / (double)iters / 2.0; /* seconds, one way */
            printf("{\"bytes\":%d,\"iterations\":%ld,\"latency_us\":%.3f,"
                   "\"bandwidth_MBps\":%.3f}\n",
                   bytes, iters, latency * 1e6, latency > 0 ? bytes / latency / 1e6 : 0.0);
            fflush(stdout);
        }
        free(buf);
    }
    MPI_Request done;
    CHK(MPI_Ibarrier(MPI_COMM_WORLD, &done));
    if (g_rank <= 1) {
        CHK(MPI_Wait(&done, MPI_STATUS_IGNORE));
    } else {
        const struct timespec ms = {0, 1000000};
        for (int flag = 0; !flag;) {
            CHK(MPI_Test(&done, &flag, MPI_STATUS_IGNORE));
            if (!flag)
                nanosleep(&ms, NULL);
        }
    }
    CHK(MPI_Finalize());
    return 0;
}
