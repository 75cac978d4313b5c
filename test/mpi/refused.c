/*
 * refused.c - a job that uses one MPI feature the symbio shim cannot
 * quiesce, then keeps running normally, so tests can check that the shim
 * refuses quiesce for it clearly (a message on stderr, the slot flagged
 * unsupported) and that the job itself neither hangs nor crashes.
 *
 * FEATURE is one of:
 *   thread_multiple  MPI_Init_thread(MPI_THREAD_MULTIPLE); a second thread
 *                    exchanges messages on its own communicator while the
 *                    main thread runs on (fails if MULTIPLE is not provided)
 *   comms            70 live communicators at once (MPI_Comm_dup), each used
 *                    by a collective, then all freed
 *   io               MPI-IO: MPI_File_open of a temporary file, a collective
 *                    write, a read-back check, close (the file is deleted)
 *   intercomm        MPI_Intercomm_create between the even and odd ranks (the
 *                    odd leader 0.1 s late, busy in MPI calls), a message
 *                    across it, MPI_Intercomm_merge, an allreduce
 *   connect          dynamic processes within the job: the even ranks
 *                    MPI_Comm_accept, the odd ranks MPI_Comm_connect (port
 *                    name sent over MPI_COMM_WORLD), a message across,
 *                    MPI_Comm_disconnect
 *   spawn            MPI_Comm_spawn of one child (this program again), a
 *                    message from the child, MPI_Comm_disconnect
 *   idup             MPI_Comm_idup of MPI_COMM_WORLD, wait, an allreduce on it
 * then every rank runs a checked ring exchange (MPI_Sendrecv + an
 * MPI_Allreduce per step) for SECONDS (default 1.5) of wall time; rank 0
 * decides when to stop and prints "refused: FEATURE: ok after N steps".
 *
 * Usage:     refused FEATURE [SECONDS]
 * Supports:  np >= 2 (even np for intercomm and connect).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#define _POSIX_C_SOURCE 200809L /* pthreads, getpid */
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "mpitest.h"

#define NCOMMS 70 /* more than the shim's 64 published communicators */
#define TAG_RING 11
#define TAG_X 12

static long ring_step(MPI_Comm comm, long step)
{
    int rank, size;
    CHK(MPI_Comm_rank(comm, &rank));
    CHK(MPI_Comm_size(comm, &size));
    long out = step * 1000 + rank, in = -1;
    int right = (rank + 1) % size, left = (rank + size - 1) % size;
    CHK(MPI_Sendrecv(&out, 1, MPI_LONG, right, TAG_RING, &in, 1, MPI_LONG, left, TAG_RING, comm,
                     MPI_STATUS_IGNORE));
    if (in != step * 1000 + left)
        fail("ring step %ld: got %ld from %d, expected %ld", step, in, left, step * 1000 + left);
    return in;
}

/* ---- thread_multiple: a second thread talking MPI at the same time ---- */

static MPI_Comm thread_comm;
static long thread_steps;

static void *second_thread(void *arg)
{
    (void)arg;
    for (long i = 0; i < 300; i++)
        ring_step(thread_comm, i);
    thread_steps = 300;
    return NULL;
}

/* ---- the features ----------------------------------------------------- */

static void use_comms(void)
{
    MPI_Comm c[NCOMMS];
    for (int i = 0; i < NCOMMS; i++) {
        CHK(MPI_Comm_dup(MPI_COMM_WORLD, &c[i]));
        int one = 1, sum = 0;
        CHK(MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, c[i]));
        int size;
        CHK(MPI_Comm_size(c[i], &size));
        if (sum != size)
            fail("allreduce on communicator %d: %d, expected %d", i, sum, size);
    }
    for (int i = 0; i < NCOMMS; i++)
        CHK(MPI_Comm_free(&c[i]));
}

static void use_io(int rank, int size)
{
    char path[256];
    if (rank == 0) {
        const char *dir = getenv("TMPDIR");
        snprintf(path, sizeof path, "%s/symbio-refused-io-%ld.dat", dir && *dir ? dir : "/tmp",
                 (long)getpid());
    }
    CHK(MPI_Bcast(path, sizeof path, MPI_CHAR, 0, MPI_COMM_WORLD));
    MPI_File fh;
    CHK(MPI_File_open(MPI_COMM_WORLD, path,
                      MPI_MODE_CREATE | MPI_MODE_RDWR | MPI_MODE_DELETE_ON_CLOSE, MPI_INFO_NULL,
                      &fh));
    CHK(MPI_File_set_errhandler(fh, MPI_ERRORS_RETURN));
    long mine = 7000 + rank, theirs = -1;
    int next = (rank + 1) % size;
    CHK(MPI_File_write_at_all(fh, (MPI_Offset)rank * (MPI_Offset)sizeof mine, &mine, 1, MPI_LONG,
                              MPI_STATUS_IGNORE));
    CHK(MPI_File_sync(fh));
    CHK(MPI_Barrier(MPI_COMM_WORLD));
    CHK(MPI_File_sync(fh));
    CHK(MPI_File_read_at(fh, (MPI_Offset)next * (MPI_Offset)sizeof theirs, &theirs, 1, MPI_LONG,
                         MPI_STATUS_IGNORE));
    if (theirs != 7000 + next)
        fail("MPI-IO: read %ld at rank %d's offset, expected %d", theirs, next, 7000 + next);
    CHK(MPI_File_close(&fh));
}

/* even ranks form one group, odd ranks the other; returns the group */
static MPI_Comm halves(int rank, int size)
{
    if (size % 2)
        fail("this feature needs an even number of ranks, got %d", size);
    MPI_Comm half;
    CHK(MPI_Comm_split(MPI_COMM_WORLD, rank % 2, rank, &half));
    return half;
}

/* one message each way between rank i of the local and remote groups */
static void across(MPI_Comm inter, int world_rank)
{
    int lrank;
    CHK(MPI_Comm_rank(inter, &lrank));
    long out = 100 + world_rank, in = -1;
    CHK(MPI_Sendrecv(&out, 1, MPI_LONG, lrank, TAG_X, &in, 1, MPI_LONG, lrank, TAG_X, inter,
                     MPI_STATUS_IGNORE));
    long want = 100 + (world_rank % 2 ? world_rank - 1 : world_rank + 1);
    if (in != want)
        fail("across the intercommunicator: got %ld, expected %ld", in, want);
}

/* MPI calls (safe points, where a quiesce may hold this rank) for a while */
static void linger(double seconds)
{
    int flag;
    double t0 = MPI_Wtime();
    while (MPI_Wtime() - t0 < seconds)
        CHK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_SELF, &flag, MPI_STATUS_IGNORE));
}

static void use_intercomm(int rank, int size)
{
    MPI_Comm half = halves(rank, size), inter, merged;
    /* the odd leader comes late: the even leader's handshake (on
       MPI_COMM_WORLD, our tag) waits for it meanwhile, where the drain of a
       held rank could take it */
    if (rank == 1)
        linger(0.1);
    CHK(MPI_Intercomm_create(half, 0, MPI_COMM_WORLD, rank % 2 ? 0 : 1, TAG_X, &inter));
    across(inter, rank);
    CHK(MPI_Intercomm_merge(inter, rank % 2, &merged));
    int one = 1, sum = 0;
    CHK(MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, merged));
    if (sum != size)
        fail("allreduce on the merged communicator: %d, expected %d", sum, size);
    CHK(MPI_Comm_free(&merged));
    CHK(MPI_Comm_free(&inter));
    CHK(MPI_Comm_free(&half));
}

static void use_connect(int rank, int size)
{
    MPI_Comm half = halves(rank, size), inter;
    char port[MPI_MAX_PORT_NAME] = "";
    if (rank == 0) {
        CHK(MPI_Open_port(MPI_INFO_NULL, port));
        CHK(MPI_Send(port, MPI_MAX_PORT_NAME, MPI_CHAR, 1, TAG_X, MPI_COMM_WORLD));
    } else if (rank == 1) {
        CHK(MPI_Recv(port, MPI_MAX_PORT_NAME, MPI_CHAR, 0, TAG_X, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE));
    }
    if (rank % 2 == 0)
        CHK(MPI_Comm_accept(port, MPI_INFO_NULL, 0, half, &inter));
    else
        CHK(MPI_Comm_connect(port, MPI_INFO_NULL, 0, half, &inter));
    CHK(MPI_Comm_set_errhandler(inter, MPI_ERRORS_RETURN));
    across(inter, rank);
    CHK(MPI_Comm_disconnect(&inter));
    if (rank == 0)
        CHK(MPI_Close_port(port));
    CHK(MPI_Comm_free(&half));
}

static void use_spawn(char *self)
{
    MPI_Comm child;
    char *args[] = {"spawn", "0", NULL};
    int err = 0;
    CHK(MPI_Comm_spawn(self, args, 1, MPI_INFO_NULL, 0, MPI_COMM_WORLD, &child, &err));
    CHK(MPI_Comm_set_errhandler(child, MPI_ERRORS_RETURN));
    if (g_rank == 0) {
        long v = -1;
        CHK(MPI_Recv(&v, 1, MPI_LONG, 0, TAG_X, child, MPI_STATUS_IGNORE));
        if (v != 4242)
            fail("from the spawned child: %ld, expected 4242", v);
    }
    CHK(MPI_Comm_disconnect(&child));
}

static void spawned_child(MPI_Comm parent)
{
    CHK(MPI_Comm_set_errhandler(parent, MPI_ERRORS_RETURN));
    long v = 4242;
    CHK(MPI_Send(&v, 1, MPI_LONG, 0, TAG_X, parent));
    CHK(MPI_Comm_disconnect(&parent));
    CHK(MPI_Finalize());
}

static void use_idup(void)
{
    MPI_Comm c;
    MPI_Request r;
    CHK(MPI_Comm_idup(MPI_COMM_WORLD, &c, &r));
    CHK(MPI_Wait(&r, MPI_STATUS_IGNORE));
    int one = 1, sum = 0, size;
    CHK(MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, c));
    CHK(MPI_Comm_size(c, &size));
    if (sum != size)
        fail("allreduce on the idup'ed communicator: %d, expected %d", sum, size);
    CHK(MPI_Comm_free(&c));
}

int main(int argc, char **argv)
{
    const char *feature = argc > 1 ? argv[1] : "";
    double seconds = argc > 2 ? atof(argv[2]) : 1.5;
    int threaded = strcmp(feature, "thread_multiple") == 0, size;
    pthread_t th;

    if (threaded) {
        int provided = -1;
        CHK(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided));
        CHK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
        CHK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
        CHK(MPI_Comm_size(MPI_COMM_WORLD, &size));
        if (provided != MPI_THREAD_MULTIPLE)
            fail("MPI_THREAD_MULTIPLE not provided (got %d)", provided);
    } else {
        size = init_world(&argc, &argv, 1);
    }
    MPI_Comm parent;
    CHK(MPI_Comm_get_parent(&parent));
    if (parent != MPI_COMM_NULL) {
        spawned_child(parent);
        return 0;
    }
    if (size < 2)
        fail("needs at least 2 ranks, got %d", size);

    if (threaded) {
        CHK(MPI_Comm_dup(MPI_COMM_WORLD, &thread_comm));
        if (pthread_create(&th, NULL, second_thread, NULL) != 0)
            fail("pthread_create failed");
    } else if (strcmp(feature, "comms") == 0) {
        use_comms();
    } else if (strcmp(feature, "io") == 0) {
        use_io(g_rank, size);
    } else if (strcmp(feature, "intercomm") == 0) {
        use_intercomm(g_rank, size);
    } else if (strcmp(feature, "connect") == 0) {
        use_connect(g_rank, size);
    } else if (strcmp(feature, "spawn") == 0) {
        use_spawn(argv[0]);
    } else if (strcmp(feature, "idup") == 0) {
        use_idup();
    } else {
        fail("usage: refused thread_multiple|comms|io|intercomm|connect|spawn|idup [seconds]");
    }

    /* the job runs on normally, for a while, with a quiesce being asked for */
    double t0 = MPI_Wtime();
    long step = 0;
    for (int stop = 0; !stop; step++) {
        ring_step(MPI_COMM_WORLD, step);
        work(2000, (uint64_t)step);
        int mine = g_rank == 0 && MPI_Wtime() - t0 > seconds;
        CHK(MPI_Allreduce(&mine, &stop, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    }
    if (threaded) {
        if (pthread_join(th, NULL) != 0 || thread_steps != 300)
            fail("second thread did not finish its exchanges");
        CHK(MPI_Comm_free(&thread_comm));
    }
    if (g_rank == 0)
        printf("refused: %s: ok after %ld steps\n", feature, step);
    CHK(MPI_Finalize());
    return 0;
}
