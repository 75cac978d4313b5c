/*
 * flood.c - many unexpected messages, matched later in every legal way.
 *
 * Each burst, every rank
 *   1. starts NBIG rendezvous-sized (256 KiB) MPI_Isends to its right
 *      neighbour on a separate communicator (their receives come last);
 *   2. sends PER_DEST small messages (1..2000 bytes, 5 tags) with blocking
 *      MPI_Send to each neighbour; nothing is posted for them yet, so they
 *      pile up unexpected at the receiver. (This relies on the eager
 *      protocol buffering messages this small, as every Open MPI transport
 *      does; that pile of unexpected messages is the point of the test);
 *   3. computes without calling MPI, so the messages sit;
 *   4. receives them with a deterministic mix of (source, tag),
 *      (source, MPI_ANY_TAG), (MPI_ANY_SOURCE, tag), (MPI_ANY_SOURCE,
 *      MPI_ANY_TAG) receives and MPI_Irecv+MPI_Wait, checking that each is
 *      exactly the message MPI's matching rules demand (per-source
 *      non-overtaking), its MPI_Get_count, MPI_SOURCE, MPI_TAG and contents;
 *   5. posts the late receives for the big messages and completes everything.
 * Bursts alternate between two duplicates of MPI_COMM_WORLD: a fast
 * neighbour may already flood us with burst b+1 while we still match burst b
 * with wildcards, and those must stay apart (as MPI's per-communicator
 * matching guarantees).
 * Message contents are a function of (burst, sender, receiver, sequence,
 * tag); the first bytes spell those out for readable failure messages.
 *
 * Usage:     flood [bursts]          (default 26 bursts)
 * Supports:  np >= 2 (the output depends on np).
 * Exit:      0 on success; a failed check prints "FAIL: ..." and aborts.
 */
#include <string.h>

#include "mpitest.h"

#define DEFAULT_BURSTS 26
#define PER_DEST 250          /* small messages per destination per burst */
#define NTAGS 5               /* small messages use tags 1..NTAGS */
#define MAX_SMALL 2000        /* bytes */
#define NBIG 2                /* big messages per burst */
#define BIG_BYTES (256 * 1024)
#define BIG_TAG 77
#define SPIN_ROUNDS 4000000L  /* compute between sending and receiving */

/* What small message `seq` from src to dst in a burst looks like. */
struct spec {
    int tag;
    int size;
    uint64_t seed;
};

static struct spec small_spec(int burst, int src, int dst, int seq)
{
    struct spec s;
    const uint64_t h = mix64(((uint64_t)burst << 48) ^ ((uint64_t)src << 32) ^
                             ((uint64_t)dst << 16) ^ (uint64_t)seq);
    s.tag = 1 + (int)(h % NTAGS);
    s.size = 1 + (int)((h >> 16) % MAX_SMALL);
    s.seed = mix64(h ^ (uint64_t)s.tag);
    return s;
}

/* Contents: pseudo-random bytes from the seed, overwritten at the start by
 * a readable header (as much of it as fits). */
static void fill(unsigned char *buf, int size, uint64_t seed, int burst, int src,
                 int dst, int seq, int tag)
{
    for (int i = 0; i < size; i += 8) {
        uint64_t w = mix64(seed + (uint64_t)i);
        for (int b = 0; b < 8 && i + b < size; b++)
            buf[i + b] = (unsigned char)(w >> (8 * b));
    }
    const unsigned char hdr[8] = {
        (unsigned char)src, (unsigned char)(src >> 8), (unsigned char)seq,
        (unsigned char)(seq >> 8), (unsigned char)tag, (unsigned char)burst,
        (unsigned char)dst, (unsigned char)(dst >> 8)};
    memcpy(buf, hdr, size < 8 ? (size_t)size : 8);
}

/* Receiver-side bookkeeping for one source. */
struct source {
    int rank;
    int remaining;
    int first; /* lowest unconsumed sequence number */
    struct spec spec[PER_DEST];
    char consumed[PER_DEST];
};

/* The message MPI must deliver for a receive from this source with this tag
 * (MPI_ANY_TAG allowed): the earliest one not yet received. */
static int expected_seq(const struct source *s, int tag)
{
    for (int q = s->first; q < PER_DEST; q++)
        if (!s->consumed[q] && (tag == MPI_ANY_TAG || s->spec[q].tag == tag))
            return q;
    return -1;
}

/* Tag of the j-th unconsumed message of a source, to pick receive tags that
 * are certain to match something. */
static int nth_tag(const struct source *s, int j)
{
    for (int q = s->first; q < PER_DEST; q++)
        if (!s->consumed[q] && j-- == 0)
            return s->spec[q].tag;
    fail("nth_tag: no such message");
}

int main(int argc, char **argv)
{
    const int size = init_world(&argc, &argv, 2);
    const long bursts = count_arg(argc, argv, DEFAULT_BURSTS, "burst");
    /* Big messages travel on their own communicator so that the wildcard
     * receives of small ones can never match them. */
    MPI_Comm bigcomm, floodcomm[2];
    CHK(MPI_Comm_dup(MPI_COMM_WORLD, &bigcomm));
    CHK(MPI_Comm_dup(MPI_COMM_WORLD, &floodcomm[0]));
    CHK(MPI_Comm_dup(MPI_COMM_WORLD, &floodcomm[1]));

    const int right = (g_rank + 1) % size, left = (g_rank + size - 1) % size;
    /* Neighbours as a set: with 2 ranks left and right are the same rank. */
    const int npeers = (left == right) ? 1 : 2;
    const int peers[2] = {right, left};

    struct source *src = calloc((size_t)npeers, sizeof *src);
    unsigned char *sbuf = malloc(MAX_SMALL), *rbuf = malloc(MAX_SMALL),
                  *want = malloc(MAX_SMALL);
    unsigned char *bigs = malloc((size_t)NBIG * BIG_BYTES),
                  *bigr = malloc((size_t)NBIG * BIG_BYTES),
                  *bigw = malloc(BIG_BYTES);
    if (!src || !sbuf || !rbuf || !want || !bigs || !bigr || !bigw)
        fail("out of memory");

    for (long burst = 0; burst < bursts; burst++) {
        const int b = (int)burst;
        uint64_t local[3] = {0, 0, 0}; /* messages, bytes, checksum */
        const MPI_Comm fcomm = floodcomm[b % 2];

        /* 1. Big sends first: they stay pending through everything below. */
        MPI_Request bigreq[2 * NBIG];
        for (int k = 0; k < NBIG; k++) {
            fill(bigs + (size_t)k * BIG_BYTES, BIG_BYTES,
                 mix64(((uint64_t)b << 32) ^ (uint64_t)(g_rank * NBIG + k)), b,
                 g_rank, right, k, BIG_TAG);
            CHK(MPI_Isend(bigs + (size_t)k * BIG_BYTES, BIG_BYTES, MPI_BYTE, right,
                          BIG_TAG, bigcomm, &bigreq[NBIG + k]));
        }

        /* 2. The flood, interleaved over the neighbours. */
        for (int seq = 0; seq < PER_DEST; seq++)
            for (int p = 0; p < npeers; p++) {
                const struct spec s = small_spec(b, g_rank, peers[p], seq);
                fill(sbuf, s.size, s.seed, b, g_rank, peers[p], seq, s.tag);
                CHK(MPI_Send(sbuf, s.size, MPI_BYTE, peers[p], s.tag, fcomm));
            }

        /* 3. Compute while the messages sit unexpected. */
        local[2] += spin(SPIN_ROUNDS, (uint64_t)b);

        /* 4. Receive the flood. */
        int total = 0;
        for (int p = 0; p < npeers; p++) {
            struct source *s = &src[p];
            s->rank = peers[p];
            s->remaining = PER_DEST;
            s->first = 0;
            memset(s->consumed, 0, sizeof s->consumed);
            for (int q = 0; q < PER_DEST; q++)
                s->spec[q] = small_spec(b, s->rank, g_rank, q);
            total += PER_DEST;
        }
        for (int i = 0; total > 0; i++) {
            const uint64_t r = mix64(((uint64_t)b << 40) ^ ((uint64_t)g_rank << 24) ^ (uint64_t)i);
            const int mode = (int)(r % 5);
            /* A source that still has messages, and one of its tags. */
            int p = (int)((r >> 8) % (uint64_t)npeers);
            if (src[p].remaining == 0)
                p = 1 - p;
            const int tag = nth_tag(&src[p], (int)((r >> 16) % (uint64_t)src[p].remaining));
            int rsrc, rtag;
            switch (mode) {
            case 0: rsrc = src[p].rank; rtag = tag; break;
            case 1: rsrc = src[p].rank; rtag = MPI_ANY_TAG; break;
            case 2: rsrc = MPI_ANY_SOURCE; rtag = tag; break;
            default: rsrc = MPI_ANY_SOURCE; rtag = MPI_ANY_TAG; break;
            }
            MPI_Status st;
            if (mode == 4) {
                MPI_Request rq;
                CHK(MPI_Irecv(rbuf, MAX_SMALL, MPI_BYTE, rsrc, rtag, fcomm, &rq));
                CHK(MPI_Wait(&rq, &st));
                if (rq != MPI_REQUEST_NULL)
                    fail("MPI_Wait left the request set");
            } else {
                CHK(MPI_Recv(rbuf, MAX_SMALL, MPI_BYTE, rsrc, rtag, fcomm, &st));
            }

            int got = -1;
            for (int k = 0; k < npeers; k++)
                if (src[k].rank == st.MPI_SOURCE)
                    got = k;
            if (got < 0)
                fail("burst %d: message from %d, which is no neighbour (asked %d/%d)",
                     b, st.MPI_SOURCE, rsrc, rtag);
            struct source *s = &src[got];
            const int seq = expected_seq(s, rtag);
            if (seq < 0)
                fail("burst %d: receive %d/%d matched source %d but nothing "
                     "matching was left from it", b, rsrc, rtag, st.MPI_SOURCE);
            const struct spec *e = &s->spec[seq];
            int count;
            CHK(MPI_Get_count(&st, MPI_BYTE, &count));
            fill(want, e->size, e->seed, b, s->rank, g_rank, seq, e->tag);
            if (st.MPI_TAG != e->tag || count != e->size ||
                memcmp(rbuf, want, (size_t)e->size) != 0) {
                if (count >= 8)
                    fail("burst %d: receive %d/%d got tag %d size %d (header: src %d "
                         "seq %d tag %d), want seq %d tag %d size %d from %d",
                         b, rsrc, rtag, st.MPI_TAG, count, rbuf[0] | rbuf[1] << 8,
                         rbuf[2] | rbuf[3] << 8, rbuf[4], seq, e->tag, e->size, s->rank);
                fail("burst %d: receive %d/%d got tag %d size %d, want seq %d tag %d "
                     "size %d from %d", b, rsrc, rtag, st.MPI_TAG, count, seq,
                     e->tag, e->size, s->rank);
            }
            s->consumed[seq] = 1;
            s->remaining--;
            while (s->first < PER_DEST && s->consumed[s->first])
                s->first++;
            total--;
            local[0]++;
            local[1] += (uint64_t)count;
            /* A sum, so the order of wildcard matches does not matter. */
            local[2] += mix64(e->seed ^ ((uint64_t)count << 20));
        }

        /* 5. The late receives for the big messages, in send order. */
        for (int k = 0; k < NBIG; k++)
            CHK(MPI_Irecv(bigr + (size_t)k * BIG_BYTES, BIG_BYTES, MPI_BYTE, left,
                          BIG_TAG, bigcomm, &bigreq[k]));
        MPI_Status bst[2 * NBIG];
        CHK(MPI_Waitall(2 * NBIG, bigreq, bst));
        for (int k = 0; k < NBIG; k++) {
            int count;
            CHK(MPI_Get_count(&bst[k], MPI_BYTE, &count));
            fill(bigw, BIG_BYTES,
                 mix64(((uint64_t)b << 32) ^ (uint64_t)(left * NBIG + k)), b, left,
                 g_rank, k, BIG_TAG);
            if (count != BIG_BYTES || bst[k].MPI_SOURCE != left ||
                bst[k].MPI_TAG != BIG_TAG ||
                memcmp(bigr + (size_t)k * BIG_BYTES, bigw, BIG_BYTES) != 0)
                fail("burst %d: big message %d from %d wrong (count %d, source %d)",
                     b, k, left, count, bst[k].MPI_SOURCE);
            local[0]++;
            local[1] += BIG_BYTES;
            local[2] += mix64(((uint64_t)b << 32) ^ (uint64_t)(left * NBIG + k) ^ 0xb16);
        }

        uint64_t global[3];
        CHK(MPI_Reduce(local, global, 3, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD));
        if (g_rank == 0)
            printf("burst %d msgs %llu bytes %llu checksum %016llx\n", b,
                   (unsigned long long)global[0], (unsigned long long)global[1],
                   (unsigned long long)global[2]);
    }

    /* Nothing may be left over: every message sent was expected. */
    int flag;
    MPI_Status st;
    CHK(MPI_Barrier(MPI_COMM_WORLD));
    for (int c = 0; c < 2; c++) {
        CHK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, floodcomm[c], &flag, &st));
        if (flag)
            fail("stray message from %d tag %d", st.MPI_SOURCE, st.MPI_TAG);
    }
    if (g_rank == 0) {
        printf("flood: ranks=%d bursts=%ld done\n", size, bursts);
        fflush(stdout);
    }
    CHK(MPI_Comm_free(&bigcomm));
    CHK(MPI_Comm_free(&floodcomm[0]));
    CHK(MPI_Comm_free(&floodcomm[1]));
    free(src);
    free(sbuf);
    free(rbuf);
    free(want);
    free(bigs);
    free(bigr);
    free(bigw);
    CHK(MPI_Finalize());
    return 0;
}
