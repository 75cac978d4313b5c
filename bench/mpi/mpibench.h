/*
 * What the benchmark MPI programs share: a failure path that says which rank
 * and call failed and aborts the job, and CHK() around every MPI call (the
 * programs set MPI_ERRORS_RETURN on MPI_COMM_WORLD so every code reaches it).
 * Each program sets g_rank once it knows its rank.
 */
#ifndef SYMBIO_MPIBENCH_H
#define SYMBIO_MPIBENCH_H

#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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
    exit(1);
}

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

#endif
