/*
 * halo2d.c - 2-D Jacobi iteration with halo exchange on a Cartesian grid.
 *
 * An N x N grid is block-distributed over a process grid from MPI_Dims_create
 * and MPI_Cart_create (periodic in dimension 0, fixed-value boundary columns in
 * dimension 1, so both wrap-around and MPI_PROC_NULL neighbours occur). Every
 * step exchanges halos with MPI_Isend/MPI_Irecv + MPI_Waitall (columns through
 * an MPI_Type_vector), then updates; every RES_EVERY steps the residual is
 * reduced with MPI_Allreduce.
 *
 * Every grid point is computed with the same arithmetic in the same order
 * whatever the decomposition, and what is printed is reduced exactly (integer
 * sums, double max), so the output is identical for every np, and for any
 * algorithm MPI (or an interposed shim) picks for the reductions.
 *
 * Usage:     halo2d [steps]          (default 3500 steps of a 384 x 384 grid)
 * Supports:  1 <= np <= 384 (tested with 2, 3, 4).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <math.h>
#include <string.h>

#include "mpitest.h"

#define DEFAULT_STEPS 3500
#define N 384                /* global grid is N x N */
#define RES_EVERY 10         /* steps between residual reductions */
#define PRINT_EVERY 200      /* steps between printed lines */
#define QSCALE 1073741824.0  /* 2^30: residuals summed as exact fixed point */

/* First global index owned by coordinate c of p along an axis of n points. */
static int block_start(int c, int p, int n) { return (int)((long)c * n / p); }

/* Initial value of global point (i, j); columns 0 and N-1 are the fixed
 * boundary and keep these values forever. */
static double initial(int i, int j)
{
    if (j == 0)
        return 1.0;
    if (j == N - 1)
        return (double)(i % 32) / 32.0 - 0.5;
    return (double)((i * 7 + j * 13) % 17) / 17.0;
}

int main(int argc, char **argv)
{
    int dims[2] = {0, 0}, periods[2] = {1, 0}, coords[2];
    MPI_Comm cart;

    const int size = init_world(&argc, &argv, 1);
    const long steps = count_arg(argc, argv, DEFAULT_STEPS, "step");
    if (size > N)
        fail("at most %d ranks", N);

    CHK(MPI_Dims_create(size, 2, dims));
    /* reorder=1: let MPI renumber; all rank-dependent work uses cart ranks. */
    CHK(MPI_Cart_create(MPI_COMM_WORLD, 2, dims, periods, 1, &cart));
    if (cart == MPI_COMM_NULL)
        fail("MPI_Cart_create returned MPI_COMM_NULL");
    CHK(MPI_Comm_set_errhandler(cart, MPI_ERRORS_RETURN));
    int crank;
    CHK(MPI_Comm_rank(cart, &crank));
    CHK(MPI_Cart_coords(cart, crank, 2, coords));

    int up, down, left, right;
    CHK(MPI_Cart_shift(cart, 0, 1, &up, &down));
    CHK(MPI_Cart_shift(cart, 1, 1, &left, &right));
    /* Dimension 1 is not periodic: its edges must be MPI_PROC_NULL. */
    if ((coords[1] == 0) != (left == MPI_PROC_NULL) ||
        (coords[1] == dims[1] - 1) != (right == MPI_PROC_NULL))
        fail("MPI_Cart_shift: wrong MPI_PROC_NULL neighbours");

    const int i0 = block_start(coords[0], dims[0], N);
    const int nx = block_start(coords[0] + 1, dims[0], N) - i0;
    const int j0 = block_start(coords[1], dims[1], N);
    const int ny = block_start(coords[1] + 1, dims[1], N) - j0;
    const int ld = ny + 2; /* row length including the two halo columns */
    double *u = calloc((size_t)(nx + 2) * (size_t)ld, sizeof *u);
    double *un = calloc((size_t)(nx + 2) * (size_t)ld, sizeof *un);
    if (!u || !un)
        fail("out of memory");
#define AT(a, i, j) (a)[(size_t)(i) * (size_t)ld + (size_t)(j)]
    for (int i = 1; i <= nx; i++)
        for (int j = 1; j <= ny; j++)
            AT(u, i, j) = initial(i0 + i - 1, j0 + j - 1);
    memcpy(un, u, sizeof *u * (size_t)(nx + 2) * (size_t)ld);

    /* A column of the interior: nx doubles, one per row. */
    MPI_Datatype column;
    CHK(MPI_Type_vector(nx, 1, ld, MPI_DOUBLE, &column));
    CHK(MPI_Type_commit(&column));

    /* Owned columns that are global boundary columns are never updated. */
    const int jfirst = (j0 == 0) ? 2 : 1;
    const int jlast = (j0 + ny == N) ? ny - 1 : ny;

    for (long step = 1; step <= steps; step++) {
        MPI_Request req[8];
        MPI_Status sts[8];
        /* Tags name the direction of travel so a rank that is its own
         * neighbour (a periodic dimension of extent 1) still matches right. */
        CHK(MPI_Irecv(&AT(u, 0, 1), ny, MPI_DOUBLE, up, 1, cart, &req[0]));
        CHK(MPI_Irecv(&AT(u, nx + 1, 1), ny, MPI_DOUBLE, down, 2, cart, &req[1]));
        CHK(MPI_Irecv(&AT(u, 1, 0), 1, column, left, 3, cart, &req[2]));
        CHK(MPI_Irecv(&AT(u, 1, ny + 1), 1, column, right, 4, cart, &req[3]));
        CHK(MPI_Isend(&AT(u, nx, 1), ny, MPI_DOUBLE, down, 1, cart, &req[4]));
        CHK(MPI_Isend(&AT(u, 1, 1), ny, MPI_DOUBLE, up, 2, cart, &req[5]));
        CHK(MPI_Isend(&AT(u, 1, ny), 1, column, right, 3, cart, &req[6]));
        CHK(MPI_Isend(&AT(u, 1, 1), 1, column, left, 4, cart, &req[7]));
        CHK(MPI_Waitall(8, req, sts));
        for (int k = 0; k < 4; k++) {
            const int peer = k == 0 ? up : k == 1 ? down : k == 2 ? left : right;
            const int want = k < 2 ? ny : nx;
            int count;
            CHK(MPI_Get_count(&sts[k], MPI_DOUBLE, &count));
            if (peer == MPI_PROC_NULL) {
                if (sts[k].MPI_SOURCE != MPI_PROC_NULL || count != 0)
                    fail("step %ld: receive from MPI_PROC_NULL has source %d count %d",
                         step, sts[k].MPI_SOURCE, count);
            } else if (sts[k].MPI_SOURCE != peer || sts[k].MPI_TAG != k + 1 ||
                       count != want) {
                fail("step %ld: halo %d: source %d tag %d count %d, want %d/%d/%d",
                     step, k, sts[k].MPI_SOURCE, sts[k].MPI_TAG, count, peer,
                     k + 1, want);
            }
        }

        double rmax = 0.0, rsum = 0.0;
        int64_t qsum = 0;
        for (int i = 1; i <= nx; i++) {
            for (int j = jfirst; j <= jlast; j++) {
                const double v = 0.25 * ((AT(u, i - 1, j) + AT(u, i + 1, j)) +
                                         (AT(u, i, j - 1) + AT(u, i, j + 1)));
                const double r = fabs(v - AT(u, i, j));
                AT(un, i, j) = v;
                if (r > rmax)
                    rmax = r;
                rsum += r;
                qsum += (int64_t)llround(r * QSCALE);
            }
        }
        double *tmp = u;
        u = un;
        un = tmp;

        if (step % RES_EVERY == 0) {
            double dmax, dsum;
            int64_t gq;
            CHK(MPI_Allreduce(&rmax, &dmax, 1, MPI_DOUBLE, MPI_MAX, cart));
            CHK(MPI_Allreduce(&qsum, &gq, 1, MPI_INT64_T, MPI_SUM, cart));
            /* The floating-point sum depends on reduction order, so it is
             * only checked against the exact one, never printed. */
            CHK(MPI_Allreduce(&rsum, &dsum, 1, MPI_DOUBLE, MPI_SUM, cart));
            if (fabs(dsum - (double)gq / QSCALE) > 1e-6 * (1.0 + dsum))
                fail("step %ld: residual sums disagree: %.17g vs %.17g", step,
                     dsum, (double)gq / QSCALE);
            if (g_rank == 0 && step % PRINT_EVERY == 0)
                printf("step %ld resmax %.12e ressum %lld\n", step, dmax,
                       (long long)gq);
        }
    }

    /* Order-independent checksum of the final grid: a sum of per-point
     * hashes of (global index, exact bits). */
    uint64_t local = 0, global = 0;
    for (int i = 1; i <= nx; i++)
        for (int j = 1; j <= ny; j++) {
            uint64_t bits;
            memcpy(&bits, &AT(u, i, j), sizeof bits);
            local += mix64(bits ^ mix64((uint64_t)(i0 + i - 1) * N + (uint64_t)(j0 + j - 1)));
        }
    CHK(MPI_Allreduce(&local, &global, 1, MPI_UINT64_T, MPI_SUM, cart));
    if (g_rank == 0) { /* world rank 0: cart ranks may be reordered */
        printf("halo2d: grid=%dx%d steps=%ld checksum=%016llx\n", N, N, steps,
               (unsigned long long)global);
        fflush(stdout);
    }
#undef AT
    CHK(MPI_Type_free(&column));
    CHK(MPI_Comm_free(&cart));
    free(u);
    free(un);
    CHK(MPI_Finalize());
    return 0;
}
