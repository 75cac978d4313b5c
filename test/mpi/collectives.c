/*
 * collectives.c - blocking and nonblocking collectives on several
 * communicators.
 *
 * Each iteration runs the same suite on MPI_COMM_WORLD, on an MPI_Comm_dup of
 * it and on the two halves of an MPI_Comm_split (color = rank % 2, reversed
 * key order so sub-communicator ranks differ from world ranks):
 *   Barrier, Bcast (sizes up to 24 KiB, rotating root), Reduce, Allreduce
 *   (SUM, MAX, BXOR; one MPI_IN_PLACE), Allgather, Alltoall, Gather, Scatter,
 *   Scan, Reduce_scatter_block; then nonblocking ones overlapping computation:
 *   Ibarrier (MPI_Test loop), Ibcast + Iallreduce outstanding together
 *   (MPI_Waitall), Ialltoall (MPI_Test loop), Iallgather + Ireduce (MPI_Testall
 *   loop), and a nonblocking collective on one communicator left pending
 *   across a blocking one on another.
 * Every contribution is an integer function of (rank, iteration, index), so
 * every result is checked exactly on every rank. The communicators are freed
 * at the end.
 *
 * Usage:     collectives [iterations]   (default 300)
 * Supports:  np >= 1 (the output depends on np).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <string.h>

#include "mpitest.h"

#define DEFAULT_ITERS 300
#define MAX_BCAST 3000 /* int64 values */
#define RED_N 257      /* values per reduction */
#define A2A_N 2        /* values per peer in all-to-all */
#define GATHER_N 3     /* values per rank in gathers */
#define WORK_CHUNK 2000L
#define WORK_CHUNKS 20 /* computation overlapped with each nonblocking op */

/* Contribution of rank r to operation `op` at iteration it, element k.
 * Below 2^40, so sums over any sensible number of ranks stay exact. */
static int64_t val(int op, int r, long it, long k)
{
    return (int64_t)(mix64(((uint64_t)op << 56) ^ ((uint64_t)r << 40) ^
                           ((uint64_t)it << 20) ^ (uint64_t)k) >> 24);
}

/* Completes a request by polling while a fixed amount of computation runs;
 * the amount of work never depends on timing. */
static void test_loop(MPI_Request *req, uint64_t seed)
{
    int flag = 0;
    for (int c = 0; c < WORK_CHUNKS; c++) {
        work(WORK_CHUNK, seed + (uint64_t)c);
        if (!flag)
            CHK(MPI_Test(req, &flag, MPI_STATUS_IGNORE));
    }
    while (!flag)
        CHK(MPI_Test(req, &flag, MPI_STATUS_IGNORE));
    if (*req != MPI_REQUEST_NULL)
        fail("completed request not freed");
}

struct ctx {
    MPI_Comm comm;
    const char *name;
    int id;     /* folded into values so communicators differ */
    int rank, size;
    uint64_t hash; /* order-sensitive checksum of every result on this rank */
};

static void fold(struct ctx *c, const int64_t *v, long n)
{
    for (long i = 0; i < n; i++)
        c->hash = mix64(c->hash ^ (uint64_t)v[i]);
}

static void expect_eq(const struct ctx *c, const char *what, long it,
                      const int64_t *got, const int64_t *want, long n)
{
    for (long i = 0; i < n; i++)
        if (got[i] != want[i])
            fail("%s on %s, iteration %ld, element %ld: got %lld want %lld",
                 what, c->name, it, i, (long long)got[i], (long long)want[i]);
}

static void suite(struct ctx *c, long it, int64_t *a, int64_t *b, int64_t *w)
{
    const int r = c->rank, p = c->size, id = c->id;
    MPI_Comm comm = c->comm;

    CHK(MPI_Barrier(comm));

    /* Bcast: rotating root, sizes crossing the eager/rendezvous boundary. */
    {
        const int root = (int)(it % p);
        const long n = 1 + (it * 131 + id * 17) % MAX_BCAST;
        for (long k = 0; k < n; k++)
            w[k] = val(1 + id * 16, root, it, k);
        if (r == root)
            memcpy(a, w, sizeof *a * (size_t)n);
        else
            memset(a, 0, sizeof *a * (size_t)n);
        CHK(MPI_Bcast(a, (int)n, MPI_INT64_T, root, comm));
        expect_eq(c, "Bcast", it, a, w, n);
        fold(c, a, n);
    }
    /* Reduce to a root other than the Bcast's. */
    {
        const int root = (int)((it + 1) % p);
        for (long k = 0; k < RED_N; k++) {
            a[k] = val(2 + id * 16, r, it, k);
            w[k] = 0;
            for (int q = 0; q < p; q++)
                w[k] += val(2 + id * 16, q, it, k);
        }
        CHK(MPI_Reduce(a, b, RED_N, MPI_INT64_T, MPI_SUM, root, comm));
        if (r == root) {
            expect_eq(c, "Reduce", it, b, w, RED_N);
            fold(c, b, RED_N);
        }
    }
    /* Allreduce: SUM into a separate buffer, MAX in place, BXOR. */
    {
        for (long k = 0; k < RED_N; k++)
            a[k] = val(3 + id * 16, r, it, k);
        CHK(MPI_Allreduce(a, b, RED_N, MPI_INT64_T, MPI_SUM, comm));
        for (long k = 0; k < RED_N; k++) {
            w[k] = 0;
            for (int q = 0; q < p; q++)
                w[k] += val(3 + id * 16, q, it, k);
        }
        expect_eq(c, "Allreduce(SUM)", it, b, w, RED_N);
        fold(c, b, RED_N);

        CHK(MPI_Allreduce(MPI_IN_PLACE, a, RED_N, MPI_INT64_T, MPI_MAX, comm));
        for (long k = 0; k < RED_N; k++) {
            w[k] = val(3 + id * 16, 0, it, k);
            for (int q = 1; q < p; q++)
                if (val(3 + id * 16, q, it, k) > w[k])
                    w[k] = val(3 + id * 16, q, it, k);
        }
        expect_eq(c, "Allreduce(MAX, in place)", it, a, w, RED_N);
        fold(c, a, RED_N);

        for (long k = 0; k < RED_N; k++)
            a[k] = val(4 + id * 16, r, it, k);
        CHK(MPI_Allreduce(a, b, RED_N, MPI_INT64_T, MPI_BXOR, comm));
        for (long k = 0; k < RED_N; k++) {
            w[k] = 0;
            for (int q = 0; q < p; q++)
                w[k] ^= val(4 + id * 16, q, it, k);
        }
        expect_eq(c, "Allreduce(BXOR)", it, b, w, RED_N);
        fold(c, b, RED_N);
    }
    /* Allgather. */
    {
        for (long k = 0; k < GATHER_N; k++)
            a[k] = val(5 + id * 16, r, it, k);
        CHK(MPI_Allgather(a, GATHER_N, MPI_INT64_T, b, GATHER_N, MPI_INT64_T, comm));
        for (int q = 0; q < p; q++)
            for (long k = 0; k < GATHER_N; k++)
                w[q * GATHER_N + k] = val(5 + id * 16, q, it, k);
        expect_eq(c, "Allgather", it, b, w, (long)p * GATHER_N);
        fold(c, b, (long)p * GATHER_N);
    }
    /* Alltoall: block for q from r is val(r, q*A2A_N + k). */
    {
        for (int q = 0; q < p; q++)
            for (long k = 0; k < A2A_N; k++)
                a[q * A2A_N + k] = val(6 + id * 16, r, it, q * A2A_N + k);
        CHK(MPI_Alltoall(a, A2A_N, MPI_INT64_T, b, A2A_N, MPI_INT64_T, comm));
        for (int q = 0; q < p; q++)
            for (long k = 0; k < A2A_N; k++)
                w[q * A2A_N + k] = val(6 + id * 16, q, it, r * A2A_N + k);
        expect_eq(c, "Alltoall", it, b, w, (long)p * A2A_N);
        fold(c, b, (long)p * A2A_N);
    }
    /* Gather then Scatter through the same root. */
    {
        const int root = (int)((it + 2) % p);
        for (long k = 0; k < GATHER_N; k++)
            a[k] = val(7 + id * 16, r, it, k);
        CHK(MPI_Gather(a, GATHER_N, MPI_INT64_T, b, GATHER_N, MPI_INT64_T, root, comm));
        if (r == root) {
            for (int q = 0; q < p; q++)
                for (long k = 0; k < GATHER_N; k++)
                    w[q * GATHER_N + k] = val(7 + id * 16, q, it, k);
            expect_eq(c, "Gather", it, b, w, (long)p * GATHER_N);
            fold(c, b, (long)p * GATHER_N);
            for (int q = 0; q < p; q++)
                for (long k = 0; k < GATHER_N; k++)
                    a[q * GATHER_N + k] = val(8 + id * 16, q, it, k);
        }
        CHK(MPI_Scatter(a, GATHER_N, MPI_INT64_T, b, GATHER_N, MPI_INT64_T, root, comm));
        for (long k = 0; k < GATHER_N; k++)
            w[k] = val(8 + id * 16, r, it, k);
        expect_eq(c, "Scatter", it, b, w, GATHER_N);
        fold(c, b, GATHER_N);
    }
    /* Scan: inclusive prefix sum over ranks 0..r. */
    {
        for (long k = 0; k < RED_N; k++) {
            a[k] = val(9 + id * 16, r, it, k);
            w[k] = 0;
            for (int q = 0; q <= r; q++)
                w[k] += val(9 + id * 16, q, it, k);
        }
        CHK(MPI_Scan(a, b, RED_N, MPI_INT64_T, MPI_SUM, comm));
        expect_eq(c, "Scan", it, b, w, RED_N);
        fold(c, b, RED_N);
    }
    /* Reduce_scatter_block: rank r gets block r of the summed vector. */
    {
        for (long k = 0; k < (long)p * A2A_N; k++)
            a[k] = val(10 + id * 16, r, it, k);
        CHK(MPI_Reduce_scatter_block(a, b, A2A_N, MPI_INT64_T, MPI_SUM, comm));
        for (long k = 0; k < A2A_N; k++) {
            w[k] = 0;
            for (int q = 0; q < p; q++)
                w[k] += val(10 + id * 16, q, it, r * A2A_N + k);
        }
        expect_eq(c, "Reduce_scatter_block", it, b, w, A2A_N);
        fold(c, b, A2A_N);
    }

    /* Nonblocking collectives, overlapped with computation. */
    MPI_Request req[2];
    CHK(MPI_Ibarrier(comm, &req[0]));
    test_loop(&req[0], (uint64_t)it);

    /* Ibcast and Iallreduce in flight together on one communicator. */
    {
        const int root = (int)((it + 3) % p);
        const long n = 1 + (it * 37 + id) % 1000;
        int64_t *red = a + MAX_BCAST, *redo = b + MAX_BCAST;
        for (long k = 0; k < n; k++)
            w[k] = val(11 + id * 16, root, it, k);
        if (r == root)
            memcpy(a, w, sizeof *a * (size_t)n);
        else
            memset(a, 0, sizeof *a * (size_t)n);
        for (long k = 0; k < RED_N; k++)
            red[k] = val(12 + id * 16, r, it, k);
        CHK(MPI_Ibcast(a, (int)n, MPI_INT64_T, root, comm, &req[0]));
        CHK(MPI_Iallreduce(red, redo, RED_N, MPI_INT64_T, MPI_SUM, comm, &req[1]));
        for (int k = 0; k < WORK_CHUNKS; k++)
            work(WORK_CHUNK, (uint64_t)k);
        CHK(MPI_Waitall(2, req, MPI_STATUSES_IGNORE));
        expect_eq(c, "Ibcast", it, a, w, n);
        fold(c, a, n);
        for (long k = 0; k < RED_N; k++) {
            w[k] = 0;
            for (int q = 0; q < p; q++)
                w[k] += val(12 + id * 16, q, it, k);
        }
        expect_eq(c, "Iallreduce", it, redo, w, RED_N);
        fold(c, redo, RED_N);
    }
    /* Ialltoall completed by a test loop. */
    {
        for (int q = 0; q < p; q++)
            for (long k = 0; k < A2A_N; k++)
                a[q * A2A_N + k] = val(13 + id * 16, r, it, q * A2A_N + k);
        CHK(MPI_Ialltoall(a, A2A_N, MPI_INT64_T, b, A2A_N, MPI_INT64_T, comm, &req[0]));
        test_loop(&req[0], (uint64_t)it * 3);
        for (int q = 0; q < p; q++)
            for (long k = 0; k < A2A_N; k++)
                w[q * A2A_N + k] = val(13 + id * 16, q, it, r * A2A_N + k);
        expect_eq(c, "Ialltoall", it, b, w, (long)p * A2A_N);
        fold(c, b, (long)p * A2A_N);
    }
    /* Iallgather + Ireduce completed with MPI_Testall. */
    {
        int64_t *red = a + MAX_BCAST, *redo = b + MAX_BCAST;
        for (long k = 0; k < GATHER_N; k++)
            a[k] = val(14 + id * 16, r, it, k);
        for (long k = 0; k < RED_N; k++)
            red[k] = val(15 + id * 16, r, it, k);
        CHK(MPI_Iallgather(a, GATHER_N, MPI_INT64_T, b, GATHER_N, MPI_INT64_T, comm, &req[0]));
        CHK(MPI_Ireduce(red, redo, RED_N, MPI_INT64_T, MPI_SUM, 0, comm, &req[1]));
        int flag = 0;
        for (int k = 0; k < WORK_CHUNKS; k++) {
            work(WORK_CHUNK, (uint64_t)k * 5);
            if (!flag)
                CHK(MPI_Testall(2, req, &flag, MPI_STATUSES_IGNORE));
        }
        while (!flag)
            CHK(MPI_Testall(2, req, &flag, MPI_STATUSES_IGNORE));
        for (int q = 0; q < p; q++)
            for (long k = 0; k < GATHER_N; k++)
                w[q * GATHER_N + k] = val(14 + id * 16, q, it, k);
        expect_eq(c, "Iallgather", it, b, w, (long)p * GATHER_N);
        fold(c, b, (long)p * GATHER_N);
        if (r == 0) {
            for (long k = 0; k < RED_N; k++) {
                w[k] = 0;
                for (int q = 0; q < p; q++)
                    w[k] += val(15 + id * 16, q, it, k);
            }
            expect_eq(c, "Ireduce", it, redo, w, RED_N);
            fold(c, redo, RED_N);
        }
    }
}

int main(int argc, char **argv)
{
    const int size = init_world(&argc, &argv, 1);
    const long iters = count_arg(argc, argv, DEFAULT_ITERS, "iteration");

    MPI_Comm dup, half;
    CHK(MPI_Comm_dup(MPI_COMM_WORLD, &dup));
    CHK(MPI_Comm_split(MPI_COMM_WORLD, g_rank % 2, -g_rank, &half));
    struct ctx ctx[3] = {
        {MPI_COMM_WORLD, "world", 0, 0, 0, 0},
        {dup, "dup", 1, 0, 0, 0},
        {half, g_rank % 2 ? "split(odd)" : "split(even)", 2 + g_rank % 2, 0, 0, 0},
    };
    for (int i = 0; i < 3; i++) {
        CHK(MPI_Comm_rank(ctx[i].comm, &ctx[i].rank));
        CHK(MPI_Comm_size(ctx[i].comm, &ctx[i].size));
    }
    /* key = -rank reverses the order inside each half. */
    const int half_size = (size - g_rank % 2 + 1) / 2;
    if (ctx[2].size != half_size || ctx[2].rank != half_size - 1 - g_rank / 2)
        fail("MPI_Comm_split: rank %d of %d, want %d of %d", ctx[2].rank,
             ctx[2].size, half_size - 1 - g_rank / 2, half_size);

    /* Room for the largest of: a Bcast, p blocks of all-to-all/gather data,
     * plus a second region for the overlapped reductions. */
    const size_t cap = MAX_BCAST + (size_t)size * (A2A_N + GATHER_N) + RED_N + 16;
    int64_t *a = malloc(sizeof *a * cap), *b = malloc(sizeof *b * cap),
            *w = malloc(sizeof *w * cap);
    if (!a || !b || !w)
        fail("out of memory");

    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < 3; i++)
            suite(&ctx[i], it, a, b, w);

        /* A nonblocking collective on one communicator stays pending while
         * blocking ones run on others (legal: each communicator has its own
         * collective order). */
        int64_t mine = val(20, g_rank, it, 0), sum = 0, want = 0, wsum = 0;
        MPI_Request req;
        CHK(MPI_Iallreduce(&mine, &sum, 1, MPI_INT64_T, MPI_SUM, dup, &req));
        CHK(MPI_Allreduce(&mine, &wsum, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
        CHK(MPI_Bcast(&wsum, 1, MPI_INT64_T, 0, half));
        CHK(MPI_Wait(&req, MPI_STATUS_IGNORE));
        for (int q = 0; q < size; q++)
            want += val(20, q, it, 0);
        if (sum != want || wsum != want)
            fail("overlapped Iallreduce: got %lld/%lld want %lld", (long long)sum,
                 (long long)wsum, (long long)want);
        ctx[0].hash = mix64(ctx[0].hash ^ (uint64_t)sum);
    }

    /* Sum of every rank's hash: the same whatever the reduction order. */
    uint64_t mine[3], tot[3];
    for (int i = 0; i < 3; i++)
        mine[i] = ctx[i].hash;
    CHK(MPI_Reduce(mine, tot, 3, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
    if (g_rank == 0) {
        printf("world %016llx\n", (unsigned long long)tot[0]);
        printf("dup %016llx\n", (unsigned long long)tot[1]);
        printf("split %016llx\n", (unsigned long long)tot[2]);
        printf("collectives: ranks=%d iterations=%ld checksum=%016llx\n", size, iters,
               (unsigned long long)mix64(tot[0] ^ mix64(tot[1] ^ mix64(tot[2]))));
        fflush(stdout);
    }

    CHK(MPI_Comm_free(&dup));
    CHK(MPI_Comm_free(&half));
    if (dup != MPI_COMM_NULL || half != MPI_COMM_NULL)
        fail("MPI_Comm_free did not reset the handles");
    free(a);
    free(b);
    free(w);
    CHK(MPI_Finalize());
    return 0;
}
