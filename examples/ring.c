/*
 * ring.c - token ring with MPI_Send/MPI_Recv.
 *
 * A token travels 0 -> 1 -> ... -> size-1 -> 0 once per lap; every hop does
 * a little computation (as a real application would between messages) and
 * folds the hop's rank, lap number and result into the token. Rank 0 prints a progress line every
 * tenth of the run and the final value, so the output is the same on every
 * run with the same number of ranks (and a symbio quiesce in the middle of a
 * run must not change it).
 *
 * Usage:     ring [laps]            (default 25000 laps, ~3 s at -np 4 on 2 cores)
 * Supports:  np >= 2 (the output depends on np).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define DEFAULT_LAPS 25000
#define WORK_ROUNDS 4000 /* computation per hop: ~10 us */
#define TAG_TOKEN 7

static int g_rank = -1;

#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 1, 2)))
#endif
static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL: [rank %d] ", g_rank);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1); /* MPI_Abort does not return; keeps the compiler honest */
}

/* MPI_ERRORS_RETURN is set on MPI_COMM_WORLD, so errors reach this check
 * instead of killing the job without saying where. */
#define CHK(call)                                                          \
    do {                                                                   \
        int rc_ = (call);                                                  \
        if (rc_ != MPI_SUCCESS) {                                          \
            char es_[MPI_MAX_ERROR_STRING];                                \
            int el_ = 0;                                                   \
            MPI_Error_string(rc_, es_, &el_);                              \
            fail("%s:%d: %s returned %d (%s)", __FILE__, __LINE__, #call, \
                 rc_, es_);                                                \
        }                                                                  \
    } while (0)

/* A cheap 64-bit mixer: every hop changes all bits of the checksum. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* The token as it travels: sent as four 64-bit integers. */
struct token {
    int64_t value; /* accumulates (rank + 1) * (lap % 97 + 1) per hop */
    int64_t hash;  /* order-sensitive checksum of every hop */
    int64_t lap;   /* lets each hop check it got the token it expected */
    int64_t hops;  /* total hops so far */
};

static void hop(struct token *t, int rank)
{
    uint64_t w = (uint64_t)t->hash;
    for (int i = 0; i < WORK_ROUNDS; i++)
        w = mix64(w + (uint64_t)i);
    t->value += (int64_t)(rank + 1) * (t->lap % 97 + 1);
    t->hash = (int64_t)mix64(w ^ (uint64_t)t->value ^ ((uint64_t)rank << 48));
    t->hops++;
}

int main(int argc, char **argv)
{
    int size;
    long laps = DEFAULT_LAPS;

    CHK(MPI_Init(&argc, &argv));
    CHK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    CHK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
    CHK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    if (size < 2)
        fail("needs at least 2 ranks, got %d", size);
    if (argc > 1) {
        char *end;
        laps = strtol(argv[1], &end, 10);
        if (*end != '\0' || laps <= 0)
            fail("bad lap count '%s'", argv[1]);
    }

    const int right = (g_rank + 1) % size;
    const int left = (g_rank + size - 1) % size;
    const long report_every = laps >= 10 ? laps / 10 : 1;
    struct token t = {0, 0, 0, 0};

    for (long lap = 0; lap < laps; lap++) {
        MPI_Status st;
        int count;
        if (g_rank == 0) {
            /* Rank 0 starts each lap and sees the token come back at its end. */
            t.lap = lap;
            hop(&t, g_rank);
            CHK(MPI_Send(&t, 4, MPI_INT64_T, right, TAG_TOKEN, MPI_COMM_WORLD));
            CHK(MPI_Recv(&t, 4, MPI_INT64_T, left, TAG_TOKEN, MPI_COMM_WORLD, &st));
        } else {
            CHK(MPI_Recv(&t, 4, MPI_INT64_T, left, TAG_TOKEN, MPI_COMM_WORLD, &st));
        }
        CHK(MPI_Get_count(&st, MPI_INT64_T, &count));
        if (count != 4 || st.MPI_SOURCE != left || st.MPI_TAG != TAG_TOKEN)
            fail("lap %ld: bad status count=%d source=%d tag=%d", lap, count,
                 st.MPI_SOURCE, st.MPI_TAG);
        /* Rank 0 sees the token after the whole lap; others mid-lap. */
        const int64_t want_hops = g_rank == 0 ? (int64_t)(lap + 1) * size
                                              : (int64_t)lap * size + g_rank;
        if (t.lap != lap || t.hops != want_hops)
            fail("lap %ld: token out of order (lap %lld, hops %lld, want %lld)",
                 lap, (long long)t.lap, (long long)t.hops, (long long)want_hops);
        if (g_rank != 0) {
            hop(&t, g_rank);
            CHK(MPI_Send(&t, 4, MPI_INT64_T, right, TAG_TOKEN, MPI_COMM_WORLD));
        } else if ((lap + 1) % report_every == 0) {
            printf("lap %ld value %lld hash %016llx\n", lap + 1,
                   (long long)t.value, (unsigned long long)t.hash);
        }
    }

    if (g_rank == 0) {
        printf("ring: ranks=%d laps=%ld value=%lld checksum=%016llx\n", size,
               laps, (long long)t.value,
               (unsigned long long)mix64((uint64_t)t.hash ^ (uint64_t)t.value));
        fflush(stdout);
    }
    CHK(MPI_Finalize());
    return 0;
}
