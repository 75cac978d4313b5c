/*
 * mpitest.h - the helpers every MPI test program in test/mpi/ shares.
 *
 * Each test program is a single C file built on its own (by
 * scripts/build-mpi-programs.sh, and some also by native/shim/test/
 * CMakeLists.txt), so this is a header of static definitions rather than a
 * library: nothing extra to link, and every program gets its own private
 * copy. Functions are `static inline` so that a program which does not use
 * one of them gets no -Wunused-function warning for it.
 *
 * The helpers' messages and arithmetic are the ones the programs always had:
 * their stdout (checksums) and their "FAIL: ..." lines must not change.
 * examples/ring.c and bench/mpi/pingpong.c do not use this header and keep
 * their own copies on purpose: they stay self-contained single files.
 *
 * Include it after any feature-test macro (crash.c's _POSIX_C_SOURCE). It
 * brings <mpi.h>, <stdint.h>, <stdio.h> and <stdlib.h> with it; a program
 * includes whatever else it uses itself. Needs C11.
 */
#ifndef SYMBIO_TEST_MPI_MPITEST_H
#define SYMBIO_TEST_MPI_MPITEST_H

#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* This process's rank in MPI_COMM_WORLD, set by init_world(); -1 before, so
 * a failure that early still prints something sensible. */
static int g_rank = -1;

/* Prints "FAIL: [rank r] <message>" on stderr and aborts the whole job (a
 * failed check in one rank must end every rank), as each program's header
 * comment promises. */
#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 1, 2)))
#endif
static inline void fail(const char *fmt, ...)
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

/* Checks the return code of an MPI call. init_world() sets MPI_ERRORS_RETURN
 * on MPI_COMM_WORLD (communicators derived from it inherit it; a program sets
 * it itself on other objects, such as windows), so errors come back here and
 * are reported with the failing call and its location instead of killing the
 * job without saying where. A macro, so that __FILE__/__LINE__ and the text of
 * the call are the caller's. */
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

/* A cheap 64-bit mixer (the splitmix64 finaliser): message contents, sizes,
 * tags and checksums are all derived from it, so they are deterministic and
 * every input bit changes the whole result. */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* Computation standing in for an application's: `rounds` chained mixes of
 * seed. The amount of work never depends on timing, only on the arguments.
 * Returns the result, for programs that fold it into their checksum. */
static inline uint64_t spin(long rounds, uint64_t seed)
{
    uint64_t x = seed;
    for (long i = 0; i < rounds; i++)
        x = mix64(x + (uint64_t)i);
    return x;
}

/* spin() for when the result is not needed: it goes into a volatile so the
 * compiler cannot drop the computation. */
static inline void work(long rounds, uint64_t seed)
{
    static volatile uint64_t sink;
    sink ^= spin(rounds, seed);
}

/* Initialises MPI the way every test program does: errors returned (see CHK),
 * g_rank set; fails unless there are at least min_ranks ranks. Returns the
 * size of MPI_COMM_WORLD. */
static inline int init_world(int *argc, char ***argv, int min_ranks)
{
    int size;
    CHK(MPI_Init(argc, argv));
    CHK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    CHK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
    CHK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    if (size < min_ranks)
        fail("needs at least %d ranks, got %d", min_ranks, size);
    return size;
}

/* Parses s as a positive decimal count (the whole string: "12abc" is not
 * one) into *out. Returns 1 on success, 0 otherwise (*out is then
 * unspecified). */
static inline int parse_count(const char *s, long *out)
{
    char *end;
    *out = strtol(s, &end, 10);
    return *end == '\0' && *out > 0;
}

/* The optional first argument every test program takes: how many
 * iterations (steps, rounds, ...) to run. Returns dflt without one, and
 * fails with "bad <what> count '<arg>'" when it is not a positive number. */
static inline long count_arg(int argc, char **argv, long dflt, const char *what)
{
    long n = dflt;
    if (argc > 1 && !parse_count(argv[1], &n))
        fail("bad %s count '%s'", what, argv[1]);
    return n;
}

#endif /* SYMBIO_TEST_MPI_MPITEST_H */
