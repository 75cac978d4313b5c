/*
 * master_worker.c - dynamic task farm with wildcard receives and probes.
 *
 * Phase 1: rank 0 hands out tasks (two in flight per worker); workers return
 * results of task-dependent length on one of several tags. The master finds
 * the next result with MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG), sizes it with
 * MPI_Get_count and receives it with MPI_Recv from status.MPI_SOURCE/MPI_TAG;
 * fixed-size "short" results are instead taken with MPI_Recv(MPI_ANY_SOURCE,
 * TAG_SHORT), which may legitimately match another worker's short result than
 * the probed one.
 * Phase 2: every worker, as soon as it is stopped, streams a fixed sequence
 * of variable-length messages on a duplicate of MPI_COMM_WORLD (so they sit
 * unmatched while the master still works on phase 1 and its wildcard probes
 * must not see them); the master takes them with MPI_Recv(MPI_ANY_SOURCE,
 * MPI_ANY_TAG) into a maximum-size buffer and checks per-source order.
 * Finally, after a barrier, each worker reports its own counts on TAG_STAT
 * (ANY_SOURCE receive).
 *
 * Which worker does which task varies from run to run; what is printed does
 * not (sums over all tasks).
 *
 * Usage:     master_worker [tasks]   (default 10000 tasks)
 * Supports:  np >= 2 (the phase1 line is the same for every np; the others
 *            depend on the number of workers).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <string.h>

#include "mpitest.h"

#define DEFAULT_TASKS 10000
#define WORK_ROUNDS 80000  /* busy work per task, so tasks overlap and queue */
#define MAX_RESULT 600     /* values in a long result */
#define SHORT_RESULT 4     /* values in a short result */
#define P2_MSGS 400        /* phase-2 messages per worker */
#define P2_MAX 700         /* phase-2 maximum values per message */

enum {
    TAG_TASK = 1,
    TAG_STOP = 2,
    TAG_RES_A = 10, /* long results, task % 3 == 0 */
    TAG_RES_B = 11, /* task % 3 == 1 */
    TAG_RES_C = 12, /* task % 3 == 2 */
    TAG_SHORT = 13, /* task % 5 == 0: fixed size, takes precedence */
    TAG_P2 = 30,    /* phase 2 uses TAG_P2 + seq % 3 */
    TAG_STAT = 40,
};

static int is_short(long task) { return task % 5 == 0; }
static int result_len(long task)
{
    return is_short(task) ? SHORT_RESULT : 1 + (int)(mix64((uint64_t)task) % MAX_RESULT);
}
static int result_tag(long task)
{
    return is_short(task) ? TAG_SHORT : TAG_RES_A + (int)(task % 3);
}
/* Values stay below 2^40 so sums over all tasks cannot overflow. */
static int64_t result_value(long task, int k)
{
    return (int64_t)(mix64((uint64_t)task * 1000003u + (uint64_t)k) >> 24);
}
static int p2_len(int worker, int seq)
{
    return 2 + (int)(mix64(((uint64_t)worker << 32) | (uint64_t)seq) % (P2_MAX - 1));
}
static int64_t p2_value(int worker, int seq, int k)
{
    return (int64_t)(mix64(((uint64_t)worker << 40) ^ ((uint64_t)seq << 16) ^ (uint64_t)k) >> 24);
}

/* Checks a received result against what the task must produce. */
static void check_result(const int64_t *buf, int count, int tag, int source,
                         long ntasks, char *done, uint64_t *sum, uint64_t *hash)
{
    if (count < 1)
        fail("empty result from %d", source);
    const long task = (long)buf[0];
    if (task < 0 || task >= ntasks)
        fail("result for unknown task %ld from %d", task, source);
    if (done[task])
        fail("task %ld returned twice (second from %d)", task, source);
    done[task] = 1;
    if (count != result_len(task) + 1 || tag != result_tag(task))
        fail("task %ld from %d: count %d tag %d, want %d/%d", task, source,
             count, tag, result_len(task) + 1, result_tag(task));
    uint64_t h = (uint64_t)task;
    for (int k = 0; k < count - 1; k++) {
        if (buf[k + 1] != result_value(task, k))
            fail("task %ld from %d: value %d wrong", task, source, k);
        *sum += (uint64_t)buf[k + 1];
        h = mix64(h ^ (uint64_t)buf[k + 1]);
    }
    *hash += h; /* a sum: independent of arrival order */
}

static void master(int size, long ntasks, MPI_Comm p2comm)
{
    const int nworkers = size - 1;
    char *done = calloc((size_t)ntasks, 1);
    int *stopped = calloc((size_t)size, sizeof *stopped);
    int64_t *buf = malloc(sizeof *buf * (MAX_RESULT + 1 > P2_MAX ? MAX_RESULT + 1 : P2_MAX));
    if (!done || !stopped || !buf)
        fail("out of memory");
    long next = 0, received = 0;
    long by_tag[4] = {0, 0, 0, 0}; /* A, B, C, short */
    uint64_t sum = 0; /* wraps: unsigned, so defined for any task count */
    uint64_t hash = 0;

    /* Two tasks in flight per worker keep results queueing at the master. */
    for (int round = 0; round < 2; round++)
        for (int w = 1; w <= nworkers && next < ntasks; w++) {
            int64_t t = next++;
            CHK(MPI_Send(&t, 1, MPI_INT64_T, w, TAG_TASK, MPI_COMM_WORLD));
        }
    for (int w = 1; w <= nworkers; w++)
        if (w > ntasks) { /* got nothing at all */
            CHK(MPI_Send(NULL, 0, MPI_INT64_T, w, TAG_STOP, MPI_COMM_WORLD));
            stopped[w] = 1;
        }

    while (received < ntasks) {
        MPI_Status pst, st;
        int count;
        CHK(MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &pst));
        if (pst.MPI_SOURCE < 1 || pst.MPI_SOURCE >= size)
            fail("probe: bad source %d", pst.MPI_SOURCE);
        if (pst.MPI_TAG == TAG_SHORT) {
            /* Some short result is certainly there (the probed one); any
             * worker's will do. */
            CHK(MPI_Recv(buf, SHORT_RESULT + 1, MPI_INT64_T, MPI_ANY_SOURCE,
                         TAG_SHORT, MPI_COMM_WORLD, &st));
            CHK(MPI_Get_count(&st, MPI_INT64_T, &count));
            by_tag[3]++;
        } else {
            int pcount;
            CHK(MPI_Get_count(&pst, MPI_INT64_T, &pcount));
            if (pcount < 1 || pcount > MAX_RESULT + 1)
                fail("probe: bad count %d from %d tag %d", pcount, pst.MPI_SOURCE,
                     pst.MPI_TAG);
            /* Exactly-sized buffer: a mismatch between probe and receive
             * would show as a truncation error. */
            int64_t *rbuf = malloc(sizeof *rbuf * (size_t)pcount);
            if (!rbuf)
                fail("out of memory");
            CHK(MPI_Recv(rbuf, pcount, MPI_INT64_T, pst.MPI_SOURCE, pst.MPI_TAG,
                         MPI_COMM_WORLD, &st));
            CHK(MPI_Get_count(&st, MPI_INT64_T, &count));
            if (st.MPI_SOURCE != pst.MPI_SOURCE || st.MPI_TAG != pst.MPI_TAG ||
                count != pcount)
                fail("receive after probe got %d/%d/%d, probe said %d/%d/%d",
                     st.MPI_SOURCE, st.MPI_TAG, count, pst.MPI_SOURCE,
                     pst.MPI_TAG, pcount);
            if (st.MPI_TAG < TAG_RES_A || st.MPI_TAG > TAG_RES_C)
                fail("unexpected tag %d from %d", st.MPI_TAG, st.MPI_SOURCE);
            by_tag[st.MPI_TAG - TAG_RES_A]++;
            memcpy(buf, rbuf, sizeof *rbuf * (size_t)pcount);
            free(rbuf);
        }
        check_result(buf, count, st.MPI_TAG, st.MPI_SOURCE, ntasks, done, &sum, &hash);
        received++;
        const int w = st.MPI_SOURCE;
        if (next < ntasks) {
            int64_t t = next++;
            CHK(MPI_Send(&t, 1, MPI_INT64_T, w, TAG_TASK, MPI_COMM_WORLD));
        } else if (!stopped[w]) {
            /* Sent after this worker's last task, so it arrives after it. */
            CHK(MPI_Send(NULL, 0, MPI_INT64_T, w, TAG_STOP, MPI_COMM_WORLD));
            stopped[w] = 1;
        }
    }
    for (int w = 1; w <= nworkers; w++)
        if (!stopped[w])
            CHK(MPI_Send(NULL, 0, MPI_INT64_T, w, TAG_STOP, MPI_COMM_WORLD));
    printf("phase1 tasks=%ld sum=%llu hash=%016llx tagA=%ld tagB=%ld tagC=%ld short=%ld\n",
           ntasks, (unsigned long long)sum, (unsigned long long)hash, by_tag[0],
           by_tag[1], by_tag[2], by_tag[3]);

    /* Phase 2: plain wildcard receives into a maximum-size buffer. */
    int *seq = calloc((size_t)size, sizeof *seq);
    if (!seq)
        fail("out of memory");
    uint64_t sum2 = 0;
    uint64_t hash2 = 0;
    for (long m = 0; m < (long)nworkers * P2_MSGS; m++) {
        MPI_Status st;
        int count;
        CHK(MPI_Recv(buf, P2_MAX, MPI_INT64_T, MPI_ANY_SOURCE, MPI_ANY_TAG,
                     p2comm, &st));
        CHK(MPI_Get_count(&st, MPI_INT64_T, &count));
        const int w = st.MPI_SOURCE;
        if (w < 1 || w >= size)
            fail("phase 2: bad source %d", w);
        const int s = seq[w]++;
        /* Non-overtaking: each worker's messages arrive in its send order. */
        if (s >= P2_MSGS || st.MPI_TAG != TAG_P2 + s % 3 || count != p2_len(w, s) ||
            buf[0] != s)
            fail("phase 2: from %d got seq %lld tag %d count %d, want seq %d tag %d count %d",
                 w, (long long)buf[0], st.MPI_TAG, count, s, TAG_P2 + s % 3,
                 s < P2_MSGS ? p2_len(w, s) : -1);
        uint64_t h = (uint64_t)w << 32 | (uint64_t)s;
        for (int k = 1; k < count; k++) {
            if (buf[k] != p2_value(w, s, k))
                fail("phase 2: from %d seq %d value %d wrong", w, s, k);
            sum2 += (uint64_t)buf[k];
            h = mix64(h ^ (uint64_t)buf[k]);
        }
        hash2 += h;
    }
    printf("phase2 msgs=%ld sum=%llu hash=%016llx\n", (long)nworkers * P2_MSGS,
           (unsigned long long)sum2, (unsigned long long)hash2);

    /* Workers send stats only after this barrier, so the phase-1 wildcard
     * probes above could never see them. Arrival order varies; only the
     * totals are deterministic. */
    CHK(MPI_Barrier(MPI_COMM_WORLD));
    int64_t tasks_done = 0;
    for (int i = 0; i < nworkers; i++) {
        int64_t stat[2];
        MPI_Status st;
        CHK(MPI_Recv(stat, 2, MPI_INT64_T, MPI_ANY_SOURCE, TAG_STAT, MPI_COMM_WORLD, &st));
        if (stat[1] != P2_MSGS)
            fail("worker %d reports %lld phase-2 messages", st.MPI_SOURCE, (long long)stat[1]);
        tasks_done += stat[0];
    }
    if (tasks_done != ntasks)
        fail("workers report %lld tasks, want %ld", (long long)tasks_done, ntasks);
    for (long t = 0; t < ntasks; t++)
        if (!done[t])
            fail("task %ld never returned", t);
    printf("master_worker: tasks=%ld total=%llu checksum=%016llx\n", ntasks,
           (unsigned long long)(sum + sum2), (unsigned long long)mix64(hash ^ mix64(hash2)));
    fflush(stdout);
    free(seq);
    free(done);
    free(stopped);
    free(buf);
}

static void worker(MPI_Comm p2comm)
{
    int64_t *res = malloc(sizeof *res * (MAX_RESULT + 1 > P2_MAX ? MAX_RESULT + 1 : P2_MAX));
    if (!res)
        fail("out of memory");
    int64_t ndone = 0;
    for (;;) {
        int64_t t;
        MPI_Status st;
        int count;
        CHK(MPI_Recv(&t, 1, MPI_INT64_T, 0, MPI_ANY_TAG, MPI_COMM_WORLD, &st));
        CHK(MPI_Get_count(&st, MPI_INT64_T, &count));
        if (st.MPI_TAG == TAG_STOP) {
            if (count != 0)
                fail("stop message with %d values", count);
            break;
        }
        if (st.MPI_TAG != TAG_TASK || count != 1)
            fail("unexpected message tag %d count %d", st.MPI_TAG, count);
        work(WORK_ROUNDS, (uint64_t)t); /* stand-in for the task's real work */
        const int len = result_len((long)t);
        res[0] = t;
        for (int k = 0; k < len; k++)
            res[k + 1] = result_value((long)t, k);
        CHK(MPI_Send(res, len + 1, MPI_INT64_T, 0, result_tag((long)t), MPI_COMM_WORLD));
        ndone++;
    }
    for (int s = 0; s < P2_MSGS; s++) {
        const int len = p2_len(g_rank, s);
        res[0] = s;
        for (int k = 1; k < len; k++)
            res[k] = p2_value(g_rank, s, k);
        CHK(MPI_Send(res, len, MPI_INT64_T, 0, TAG_P2 + s % 3, p2comm));
    }
    CHK(MPI_Barrier(MPI_COMM_WORLD));
    int64_t stat[2] = {ndone, P2_MSGS};
    CHK(MPI_Send(stat, 2, MPI_INT64_T, 0, TAG_STAT, MPI_COMM_WORLD));
    free(res);
}

int main(int argc, char **argv)
{
    const int size = init_world(&argc, &argv, 2);
    const long ntasks = count_arg(argc, argv, DEFAULT_TASKS, "task");
    MPI_Comm p2comm;
    CHK(MPI_Comm_dup(MPI_COMM_WORLD, &p2comm));
    if (g_rank == 0)
        master(size, ntasks, p2comm);
    else
        worker(p2comm);
    CHK(MPI_Comm_free(&p2comm));
    CHK(MPI_Finalize());
    return 0;
}
