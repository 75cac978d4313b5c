/*
 * libsymbio-shim internals. The shim is preloaded into every MPI rank and
 * interposes the MPI_* symbols (calling PMPI_*). Single-threaded use of MPI is
 * assumed (up to MPI_THREAD_SERIALIZED); MPI_THREAD_MULTIPLE marks the job as
 * not quiescable.
 *
 * Fast path per MPI call: one relaxed load of the command word and a few
 * counter updates in the rank's own slot. Everything else (holding, draining,
 * bookkeeping of completions while held) lives in the slow path.
 */
#ifndef SYMBIO_SHIM_H
#define SYMBIO_SHIM_H

#include <mpi.h>
#include <stdint.h>
#include <stddef.h>

#include "symbio_segment.h"

#define SHIM_LIKELY(x) __builtin_expect(!!(x), 1)
#define SHIM_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---- communicators ---------------------------------------------------- */

typedef struct shim_comm {
  MPI_Comm comm;
  uint64_t gid;        /* same on every member */
  int pub;             /* index in slot->comms[], -1 if not published */
  int size;            /* local group size */
  int remote_size;     /* intercommunicator: remote group size, else 0 */
  int *world_of;       /* rank -> world rank for the group messages come from
                          (remote group of an intercomm); NULL = identity */
  uint64_t created;    /* communicators created with this one as parent */
  int refs;            /* pending requests that point here */
  int dead;            /* freed by the application, kept for refs */
  struct shim_comm *next_free;
} shim_comm;

shim_comm *shim_comm_find(MPI_Comm comm);
shim_comm *shim_comm_get(MPI_Comm comm); /* find, or register lazily */
void shim_comm_init(void);
void shim_comm_unref(shim_comm *c);
void shim_coll_enter(MPI_Comm comm);
void shim_coll_leave(void);
int shim_comm_count(void);
shim_comm *shim_comm_at(int i);

static inline int shim_world_of(const shim_comm *c, int rank) {
  if (rank < 0) return -1; /* MPI_PROC_NULL, MPI_ANY_SOURCE */
  if (!c || !c->world_of) return rank;
  int n = c->remote_size ? c->remote_size : c->size;
  return rank < n ? c->world_of[rank] : -1;
}

/* ---- request table ---------------------------------------------------- */

enum shim_req_kind { RK_SEND = 1, RK_RECV, RK_COLL, RK_PSEND, RK_PRECV };

typedef struct shim_req {
  MPI_Request req;
  uint8_t kind;
  uint8_t active;    /* persistent: started; others: always 1 */
  uint8_t counted;   /* a receive's arrival already counted */
  uint8_t done;      /* completion seen by the hold poll; pending_* adjusted */
  uint8_t shim_done; /* persistent receive satisfied from the drain buffer */
  uint8_t cancel_asked; /* MPI_Cancel was called: check the status */
  int peer_world;    /* send: destination world rank (-1: none) */
  shim_comm *comm;   /* receives: to translate MPI_ANY_SOURCE */
  /* persistent receive arguments, to match against drained messages */
  void *buf;
  int count;
  MPI_Datatype dt;
  int src;
  int tag;
  MPI_Status st; /* status of a shim_done completion */
} shim_req;

int shim_reqtab_init(size_t capacity);
shim_req *shim_req_add(MPI_Request req, int kind);
shim_req *shim_req_find(MPI_Request req);
void shim_req_remove(shim_req *e);
size_t shim_req_count(void);
shim_req *shim_req_at(size_t i);
/* Completion of a tracked request observed with `st` (may be cancelled). */
void shim_req_completed(shim_req *e, const MPI_Status *st);
/* Completion seen without freeing the request (counts, adjusts pending). */
void shim_req_observe(shim_req *e, const MPI_Status *st);
/* While held: look at every tracked request without completing it. */
int shim_req_poll_all(void);
extern int shim_shim_done_count;

/* ---- drain buffer ----------------------------------------------------- */

typedef struct shim_msg {
  struct shim_msg *next;
  MPI_Comm comm;
  int source; /* rank in comm (remote group for intercomms) */
  int tag;
  int bytes;
  uint64_t magic; /* for fake MPI_Message handles */
  unsigned char data[];
} shim_msg;

extern int shim_drained_count; /* messages waiting in the buffer */
int shim_drain_all(void);      /* pull every unexpected message; 1 if any */
shim_msg *shim_drain_match(MPI_Comm comm, int source, int tag, int take);
void shim_msg_status(const shim_msg *m, MPI_Status *st);
int shim_msg_unpack(shim_msg *m, void *buf, int count, MPI_Datatype dt, MPI_Comm comm,
                    MPI_Status *st);
int shim_msg_deliver(shim_msg *m, void *buf, int count, MPI_Datatype dt, MPI_Comm comm,
                     MPI_Status *st);
int shim_msg_irecv(shim_msg *m, void *buf, int count, MPI_Datatype dt, MPI_Comm comm,
                   MPI_Request *req);
extern int shim_claimed_count; /* fake MPI_Message handles outstanding */
MPI_Message shim_msg_claim(shim_msg *m);
int shim_msg_is_fake(MPI_Message m);
shim_msg *shim_msg_unclaim(MPI_Message h);
void shim_msg_free(shim_msg *m);
void shim_drain_forget(MPI_Comm comm);

/* ---- core: segment, state, holding ------------------------------------ */

typedef struct shim_globals {
  int attached;                 /* slot claimed in a live segment */
  int inited;                   /* MPI_Init done */
  const uint32_t *cmdp;         /* &hdr->cmd, or &local_run when detached */
  uint64_t tally;               /* local count of counter updates, so a held
                                   rank knows to tell the agent */
  uint64_t tally_published;
  uint32_t run_word;            /* the command word we last acted on while
                                   running: the fast path compares to it */
  symbio_seg_header *hdr;
  size_t map_bytes;
  symbio_slot_fixed *slot;
  uint64_t *sent;               /* [world_size] */
  uint64_t *recvd;              /* [world_size] */
  int world_rank;
  int world_size;
  int unsupported;              /* enum symbio_unsupported */
  int passthrough;              /* MPI_THREAD_MULTIPLE: no bookkeeping at all */
  uint32_t ncomms;              /* private copy of slot->ncomms (never trust
                                   shared memory for our own indices) */
  uint32_t ignore_epoch;        /* epoch we resumed from by ourselves */
  int have_ignore;
  int agent_pidfd;
  int32_t agent_pid;
  uint64_t held_since_ns;       /* when the current hold started */
  uint32_t held_epoch;
  uint64_t last_live_check_ns;
  int verbose;
} shim_globals;

extern shim_globals shim_g;

static inline uint32_t shim_cmd_word(void) {
  return __atomic_load_n(shim_g.cmdp, __ATOMIC_RELAXED);
}

/* Hold step results. */
enum { HS_PROCEED = 0, HS_HELD = 1, HS_FROZEN = 2 };

/* At a call boundary: hold while told to; returns when the rank may run. */
void shim_safe_point_slow(void);
/* Inside a blocking call (one iteration). HS_FROZEN: make no MPI call now. */
int shim_hold_step(void);

/* Every intercepted call starts here: count the call (progress witness) and
 * look at the command word once. */
/* Anything new in the command word since we last acted on it? */
#define SHIM_CMD_NEW() SHIM_UNLIKELY(shim_cmd_word() != shim_g.run_word)

/* Exit boundary of a call that may have been held: do not return to the
 * application while a hold is on. */
#define SHIM_BOUNDARY()                          \
  do {                                           \
    if (SHIM_CMD_NEW()) shim_safe_point_slow();  \
  } while (0)

#define SHIM_SAFE_POINT()                        \
  do {                                           \
    SHIM_SLOT_ADD(pmpi_calls, 1);                \
    if (SHIM_CMD_NEW()) shim_safe_point_slow();  \
  } while (0)

/* Every wrapper starts here. Under MPI_THREAD_MULTIPLE the shim's bookkeeping
 * (not thread-safe) is bypassed entirely: the call goes straight to PMPI. */
#define SHIM_ENTER(passthrough_call)                                   \
  do {                                                                 \
    if (SHIM_UNLIKELY(shim_g.passthrough)) return (passthrough_call); \
    SHIM_SAFE_POINT();                                                 \
  } while (0)

/* Inside test loops: returns non-zero when the loop must skip MPI this turn. */
static inline int shim_blocked_tick(void) {
  if (SHIM_LIKELY(shim_cmd_word() == shim_g.run_word)) return 0;
  return shim_hold_step() == HS_FROZEN;
}

/* Wait for one request (Test) or n (Testall, when `all`) as a safe point: the
 * blocking form of every receive-side wait. */
int shim_wait_test_loop(int n, MPI_Request *r, MPI_Status *sts, int all);

/* Counters (owner-only writes; relaxed so the agent can read them). */
static inline void shim_count_sent(int world_peer) {
  if (world_peer >= 0 && world_peer < shim_g.world_size) {
    uint64_t *p = &shim_g.sent[world_peer];
    __atomic_store_n(p, *p + 1, __ATOMIC_RELAXED);
    shim_g.tally++;
  }
}
static inline void shim_uncount_sent(int world_peer) {
  if (world_peer >= 0 && world_peer < shim_g.world_size) {
    uint64_t *p = &shim_g.sent[world_peer];
    __atomic_store_n(p, *p - 1, __ATOMIC_RELAXED);
    shim_g.tally++;
  }
}
static inline void shim_count_recvd(int world_peer) {
  if (world_peer >= 0 && world_peer < shim_g.world_size) {
    uint64_t *p = &shim_g.recvd[world_peer];
    __atomic_store_n(p, *p + 1, __ATOMIC_RELAXED);
    shim_g.tally++;
  }
}

/* Slot fields the rank owns; *_add are owner-only read-modify-writes. */
#define SHIM_SLOT_ADD(field, delta)                                                   \
  __atomic_store_n(&shim_g.slot->field, shim_g.slot->field + (delta), __ATOMIC_RELAXED)
#define SHIM_SLOT_SET(field, v) __atomic_store_n(&shim_g.slot->field, (v), __ATOMIC_RELAXED)

void shim_change_begin(void); /* mark the slot as being updated (odd seq) */
void shim_changed(void);      /* done updating: even seq, wake the agent */
void shim_mark_unsupported(int reason, const char *what);
void shim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t shim_now_ns(void);
int shim_attach_after_init(int provided);
void shim_detach_at_finalize(void);

/* Publish (gid, seq) of a communicator; pub index management. */
int shim_pub_add(uint64_t gid);
void shim_pub_remove(int pub);
void shim_pub_seq_inc(int pub);

/* Scratch for completion calls (no allocation on the fast path). */
#define SHIM_SCRATCH 1024
extern MPI_Request shim_scratch_reqs[SHIM_SCRATCH];
extern MPI_Status shim_scratch_sts[SHIM_SCRATCH];

#endif
