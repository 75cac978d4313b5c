/*
 * symbio control segment: the shared-memory ABI between the agent (addon) and
 * every rank's shim on one node. C11, no dependencies; included by the shim
 * (C) and the addon (C++).
 *
 * One POSIX shm object per job per node, created by the agent (mode 0600),
 * opened by ranks through SYMBIO_SEGMENT=<shm name>. Layout:
 *
 *   [symbio_seg_header]                       (SYMBIO_HEADER_BYTES)
 *   [slot 0][slot 1]...[slot slot_count-1]    (slot_size bytes each)
 *
 * A slot = symbio_slot_fixed followed by two uint64 arrays of world_size
 * entries: sent[world_size], recvd[world_size] (indexed by MPI_COMM_WORLD rank).
 *
 * Ownership: the agent writes the header and each slot's catch-up table; a rank
 * writes only its own slot (except `catchup*`). Every field a reader did not
 * write must be validated by the reader: a rank may be buggy, a file may be
 * stale.
 *
 * Command word (header.cmd): (epoch << 2) | SYMBIO_CMD_*. Ranks read it with
 * one relaxed load on every MPI call; non-zero low bits send them to the slow
 * path. It is also the futex ranks sleep on while held or frozen. The agent
 * bumps the epoch for every new quiesce, so a rank that resumed by itself
 * (agent gone, limit hit) can ignore the command of the epoch it gave up on.
 */
#ifndef SYMBIO_SEGMENT_H
#define SYMBIO_SEGMENT_H

#include <stdint.h>

#define SYMBIO_SEG_MAGIC 0x3147455342594d53ull /* "SMYBSEG1" little-endian */
#define SYMBIO_ABI_VERSION 1u
#define SYMBIO_HEADER_BYTES 512u
#define SYMBIO_MAX_COMMS 64u      /* communicators published per rank */
#define SYMBIO_MAX_SLOTS 4096u    /* local ranks per node */
#define SYMBIO_MAX_WORLD 1048576u /* world ranks counted per slot */
#define SYMBIO_JOB_ID_BYTES 64u

/* Command (low two bits of header.cmd). */
#define SYMBIO_CMD_RUN 0u
#define SYMBIO_CMD_HOLD 1u
#define SYMBIO_CMD_FREEZE 2u
#define SYMBIO_CMD_MASK 3u
#define SYMBIO_CMD_EPOCH(w) ((w) >> 2)
#define SYMBIO_CMD_OF(w) ((w) & SYMBIO_CMD_MASK)
#define SYMBIO_CMD_WORD(epoch, cmd) (((uint32_t)(epoch) << 2) | (cmd))

/* Rank state (slot.state). */
enum symbio_rank_state {
  SYMBIO_ST_EMPTY = 0,     /* slot not claimed */
  SYMBIO_ST_RUNNING = 1,   /* application running */
  SYMBIO_ST_HELD = 2,      /* at a safe point, draining, not returning */
  SYMBIO_ST_CATCHUP = 3,   /* told to run on to reach a collective */
  SYMBIO_ST_FROZEN = 4,    /* no MPI calls at all */
  SYMBIO_ST_FINALIZED = 5, /* passed MPI_Finalize; counters are final */
  SYMBIO_ST_DETACHED = 6   /* gave up on the agent; ignores the segment */
};

/* Slot flags (slot.flags). */
#define SYMBIO_F_IN_COLL 0x1u        /* inside a blocking collective */
#define SYMBIO_F_UNSUPPORTED 0x2u    /* job used a feature we cannot quiesce */
#define SYMBIO_F_AUTORESUMED 0x4u    /* resumed by itself at least once */
#define SYMBIO_F_TABLE_FULL 0x8u     /* request table overflowed */
#define SYMBIO_F_THREAD_MULTIPLE 0x10u

/* Why a rank refuses to be quiesced (slot.unsupported). */
enum symbio_unsupported {
  SYMBIO_UNSUP_NONE = 0,
  SYMBIO_UNSUP_RMA = 1,
  SYMBIO_UNSUP_IO = 2,
  SYMBIO_UNSUP_DYNAMIC = 3,
  SYMBIO_UNSUP_THREAD_MULTIPLE = 4,
  SYMBIO_UNSUP_TOO_MANY_REQUESTS = 5,
  SYMBIO_UNSUP_TOO_MANY_COMMS = 6,
  SYMBIO_UNSUP_WORLD_TOO_LARGE = 7,
  SYMBIO_UNSUP_COMM_IDUP = 8
};

/* Why a rank resumed by itself (slot.autoresume_reason). */
enum symbio_autoresume {
  SYMBIO_AR_NONE = 0,
  SYMBIO_AR_AGENT_GONE = 1,
  SYMBIO_AR_TIMEOUT = 2
};

typedef struct symbio_seg_header {
  uint64_t magic;
  uint32_t abi_version;
  uint32_t header_bytes;  /* == SYMBIO_HEADER_BYTES */
  uint64_t segment_bytes; /* total mapped size */
  uint32_t slot_count;
  uint32_t slot_bytes;    /* multiple of 64 */
  uint32_t world_size;    /* entries in each of sent[] / recvd[] */
  uint32_t max_comms;     /* == SYMBIO_MAX_COMMS */
  int32_t agent_pid;
  uint32_t resume_timeout_ms; /* rank resumes by itself after this long held */
  uint64_t created_ns;        /* CLOCK_REALTIME */
  char job_id[SYMBIO_JOB_ID_BYTES];
  uint8_t reserved0[8]; /* pads the fixed part to 128 bytes */
  /* --- dynamic words, each on its own cache line --- */
  uint32_t cmd;           /* futex: (epoch << 2) | SYMBIO_CMD_* */
  uint8_t pad_cmd[60];
  uint32_t agent_wake;    /* futex: ranks bump + wake on any slow-path change */
  uint8_t pad_wake[60];
  uint64_t cmd_set_ns;    /* CLOCK_MONOTONIC when cmd last changed */
  uint8_t pad_tail[SYMBIO_HEADER_BYTES - 256 - 8];
} symbio_seg_header;

typedef struct symbio_comm_pub {
  uint64_t gid; /* communicator id, equal on every member rank */
  uint64_t seq; /* collectives entered on it so far */
} symbio_comm_pub;

typedef struct symbio_slot_fixed {
  /* written by the rank */
  uint32_t state;          /* enum symbio_rank_state */
  uint32_t flags;          /* SYMBIO_F_* */
  int32_t pid;
  int32_t world_rank;
  int32_t world_size;      /* the job's MPI_COMM_WORLD size */
  uint32_t ack_epoch;      /* epoch of the last command the rank acted on */
  uint32_t change_seq;     /* bumped whenever the slow path changes anything */
  uint32_t unsupported;    /* enum symbio_unsupported */
  uint32_t autoresume_reason; /* enum symbio_autoresume */
  uint32_t ncomms;         /* valid entries in comms[] */
  uint32_t pending_sends;  /* tracked send requests not yet complete */
  uint32_t pending_recvs;  /* posted receives not yet complete */
  uint32_t pending_colls;  /* nonblocking collectives not yet complete */
  uint32_t drained_now;    /* messages sitting in the shim's drain buffer */
  uint64_t drained_total;  /* messages ever drained */
  uint64_t pmpi_calls;     /* PMPI calls made (progress witness) */
  uint64_t held_ns;        /* CLOCK_MONOTONIC when last HELD */
  uint64_t frozen_ns;      /* CLOCK_MONOTONIC when last FROZEN */
  uint64_t resumed_ns;     /* CLOCK_MONOTONIC when last RUNNING again */
  uint64_t autoresumes;    /* times it resumed by itself */
  symbio_comm_pub comms[SYMBIO_MAX_COMMS];
  /* written by the agent */
  uint32_t catchup_count;  /* valid entries in catchup[] */
  uint32_t catchup_epoch;  /* epoch the catch-up targets belong to */
  symbio_comm_pub catchup[SYMBIO_MAX_COMMS]; /* gid -> target seq */
} symbio_slot_fixed;

/* Bytes of a slot for a world of `world` ranks, rounded to a cache line. */
static inline uint64_t symbio_slot_bytes(uint32_t world) {
  uint64_t raw = (uint64_t)sizeof(symbio_slot_fixed) + 16ull * world;
  return (raw + 63ull) & ~63ull;
}

static inline uint64_t symbio_segment_bytes(uint32_t slots, uint32_t world) {
  return (uint64_t)SYMBIO_HEADER_BYTES + (uint64_t)slots * symbio_slot_bytes(world);
}

/*
 * Validate a mapped header of `mapped` bytes. Returns NULL when good, else a
 * static string saying what is wrong (for a one-line error).
 */
static inline const char *symbio_header_problem(const symbio_seg_header *h, uint64_t mapped) {
  if (mapped < SYMBIO_HEADER_BYTES) return "segment smaller than its header";
  if (h->magic != SYMBIO_SEG_MAGIC) return "bad magic (not a symbio control segment)";
  if (h->abi_version != SYMBIO_ABI_VERSION) return "ABI version mismatch between shim and agent";
  if (h->header_bytes != SYMBIO_HEADER_BYTES) return "header size mismatch";
  if (h->max_comms != SYMBIO_MAX_COMMS) return "communicator table size mismatch";
  if (h->slot_count == 0 || h->slot_count > SYMBIO_MAX_SLOTS) return "slot count out of range";
  if (h->world_size == 0 || h->world_size > SYMBIO_MAX_WORLD) return "world size out of range";
  if (h->slot_bytes != symbio_slot_bytes(h->world_size)) return "slot size does not match world size";
  if (h->segment_bytes != symbio_segment_bytes(h->slot_count, h->world_size))
    return "segment size does not match its slots";
  if (h->segment_bytes > mapped) return "segment truncated";
  if (h->resume_timeout_ms == 0) return "resume timeout is zero";
  return 0;
}

static inline symbio_slot_fixed *symbio_slot_at(symbio_seg_header *h, uint32_t i) {
  return (symbio_slot_fixed *)((char *)h + SYMBIO_HEADER_BYTES + (uint64_t)i * h->slot_bytes);
}

static inline uint64_t *symbio_slot_sent(symbio_slot_fixed *s) {
  return (uint64_t *)((char *)s + sizeof(symbio_slot_fixed));
}

static inline uint64_t *symbio_slot_recvd(symbio_slot_fixed *s, uint32_t world) {
  return symbio_slot_sent(s) + world;
}

#ifdef __cplusplus
static_assert(sizeof(symbio_seg_header) == SYMBIO_HEADER_BYTES, "header size");
static_assert(sizeof(symbio_slot_fixed) % 8 == 0, "slot alignment");
#else
_Static_assert(sizeof(symbio_seg_header) == SYMBIO_HEADER_BYTES, "header size");
_Static_assert(sizeof(symbio_slot_fixed) % 8 == 0, "slot alignment");
#endif

#endif
