/*
 * The drain buffer. While held, a rank pulls every arrived-but-unmatched
 * message (MPI_Improbe + MPI_Mrecv as MPI_PACKED, which matches any type
 * signature) into shim memory, so that nothing is left half-transferred on the
 * interconnect. Later receives, probes and matched probes look here first, in
 * arrival order, which is MPI's matching order for one (source, communicator):
 * a drained message always arrived before anything still inside MPI.
 *
 * Receives the application posted before the hold are untouched: MPI matches
 * arriving messages against posted receives before they become unexpected, so
 * Improbe never sees them.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

#define MSG_MAGIC 0x53594d4253475321ull /* fake MPI_Message marker */

static shim_msg *head, *tail; /* drained, in arrival order */
static shim_msg *claimed;     /* taken by M(I)probe, awaiting M(I)recv */
int shim_claimed_count;
int shim_drained_count;
static int too_big_said;

static void set_drained_now(void) { SHIM_SLOT_SET(drained_now, (uint32_t)shim_drained_count); }

int shim_drain_all(void) {
  int moved = 0;
  for (int i = 0; i < shim_comm_count(); i++) {
    shim_comm *c = shim_comm_at(i);
    if (!c) continue;
    for (;;) {
      int flag = 0, bytes = 0;
      MPI_Message mh;
      MPI_Status st;
      MPI_Count n = 0;
      /* look first (without matching) so a message we cannot hold is left in
         MPI, in order; that quiesce then stalls and resumes, nothing lost */
      if (PMPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, c->comm, &flag, &st) != MPI_SUCCESS || !flag)
        break;
      PMPI_Get_elements_x(&st, MPI_BYTE, &n);
      if (n == MPI_UNDEFINED || n < 0 || n > INT_MAX) {
        if (!too_big_said++)
          shim_log("a %lld-byte message is too large to drain; quiesce cannot complete while it "
                   "is in flight",
                   (long long)n);
        break;
      }
      if (PMPI_Improbe(st.MPI_SOURCE, st.MPI_TAG, c->comm, &flag, &mh, &st) != MPI_SUCCESS || !flag)
        break;
      bytes = (int)n;
      shim_change_begin();
      shim_msg *m = malloc(sizeof *m + (size_t)bytes);
      if (!m) {
        shim_log("out of memory draining a %d-byte message; aborting", bytes);
        PMPI_Abort(MPI_COMM_WORLD, 70);
        return moved;
      }
      /* the message is matched already: this completes the transfer */
      PMPI_Mrecv(m->data, bytes, MPI_PACKED, &mh, MPI_STATUS_IGNORE);
      m->next = NULL;
      m->comm = c->comm;
      m->source = st.MPI_SOURCE;
      m->tag = st.MPI_TAG;
      m->bytes = bytes;
      m->magic = 0;
      if (tail)
        tail->next = m;
      else
        head = m;
      tail = m;
      shim_drained_count++;
      SHIM_SLOT_ADD(drained_total, 1);
      shim_count_recvd(shim_world_of(c, st.MPI_SOURCE));
      moved = 1;
    }
  }
  if (moved) set_drained_now();
  return moved;
}

shim_msg *shim_drain_match(MPI_Comm comm, int source, int tag, int take) {
  shim_msg *prev = NULL;
  for (shim_msg *m = head; m; prev = m, m = m->next) {
    if (m->comm != comm) continue;
    if (source != MPI_ANY_SOURCE && source != m->source) continue;
    if (tag != MPI_ANY_TAG && tag != m->tag) continue;
    if (take) {
      if (prev)
        prev->next = m->next;
      else
        head = m->next;
      if (tail == m) tail = prev;
      m->next = NULL;
      shim_drained_count--;
      set_drained_now();
    }
    return m;
  }
  return NULL;
}

void shim_msg_status(const shim_msg *m, MPI_Status *st) {
  if (st == MPI_STATUS_IGNORE) return;
  st->MPI_SOURCE = m->source;
  st->MPI_TAG = m->tag;
  st->MPI_ERROR = MPI_SUCCESS;
  PMPI_Status_set_elements_x(st, MPI_BYTE, (MPI_Count)m->bytes);
  PMPI_Status_set_cancelled(st, 0);
}

/* Copy a drained message into the application's buffer; frees m. The error
 * (truncation) is in the status and the result; no error handler is called. */
int shim_msg_unpack(shim_msg *m, void *buf, int count, MPI_Datatype dt, MPI_Comm comm,
                       MPI_Status *st) {
  int cap = 0, one = 0, pos = 0, rc = MPI_SUCCESS;
  PMPI_Pack_size(count, dt, comm, &cap);
  PMPI_Pack_size(1, dt, comm, &one);
  int n = count;
  if (m->bytes > cap) {
    rc = MPI_ERR_TRUNCATE;
  } else if (one > 0) {
    n = m->bytes / one;
  }
  if (n > 0) PMPI_Unpack(m->data, m->bytes, &pos, buf, n, dt, comm);
  shim_msg_status(m, st);
  if (st != MPI_STATUS_IGNORE) st->MPI_ERROR = rc;
  free(m);
  return rc;
}

int shim_msg_deliver(shim_msg *m, void *buf, int count, MPI_Datatype dt, MPI_Comm comm,
                     MPI_Status *st) {
  MPI_Status local;
  int rc = shim_msg_unpack(m, buf, count, dt, comm, st == MPI_STATUS_IGNORE ? &local : st);
  if (rc != MPI_SUCCESS) return PMPI_Comm_call_errhandler(comm, rc), rc;
  return rc;
}

/* A nonblocking receive satisfied from the buffer: a generalized request that
 * is complete at once, so every MPI completion call handles it. */
typedef struct done_state {
  MPI_Status st;
  int rc;
} done_state;

static int done_query(void *extra, MPI_Status *st) {
  done_state *d = extra;
  *st = d->st;
  return d->rc;
}
static int done_free(void *extra) {
  free(extra);
  return MPI_SUCCESS;
}
static int done_cancel(void *extra, int complete) {
  (void)extra;
  (void)complete;
  return MPI_SUCCESS; /* already complete: nothing to cancel */
}

int shim_msg_irecv(shim_msg *m, void *buf, int count, MPI_Datatype dt, MPI_Comm comm,
                   MPI_Request *req) {
  done_state *d = malloc(sizeof *d);
  if (!d) return PMPI_Comm_call_errhandler(comm, MPI_ERR_NO_MEM), MPI_ERR_NO_MEM;
  d->rc = shim_msg_unpack(m, buf, count, dt, comm, &d->st);
  int rc = PMPI_Grequest_start(done_query, done_free, done_cancel, d, req);
  if (rc != MPI_SUCCESS) {
    free(d);
    return rc;
  }
  return PMPI_Grequest_complete(*req);
}

/* ---- fake MPI_Message handles for M(I)probe of drained messages -------- */

MPI_Message shim_msg_claim(shim_msg *m) {
  m->magic = MSG_MAGIC;
  m->next = claimed;
  claimed = m;
  shim_claimed_count++;
  return (MPI_Message)(void *)m;
}

int shim_msg_is_fake(MPI_Message h) {
  for (shim_msg *m = claimed; m; m = m->next)
    if ((MPI_Message)(void *)m == h) return 1;
  return 0;
}

shim_msg *shim_msg_unclaim(MPI_Message h) {
  shim_msg *prev = NULL;
  for (shim_msg *m = claimed; m; prev = m, m = m->next) {
    if ((MPI_Message)(void *)m != h || m->magic != MSG_MAGIC) continue;
    if (prev)
      prev->next = m->next;
    else
      claimed = m->next;
    shim_claimed_count--;
    m->next = NULL;
    m->magic = 0;
    return m;
  }
  return NULL;
}

void shim_msg_free(shim_msg *m) { free(m); }

/* A freed communicator's handle may come back for a new one: its drained
 * messages must not be delivered there. */
void shim_drain_forget(MPI_Comm comm) {
  shim_msg *prev = NULL, *m = head;
  while (m) {
    shim_msg *next = m->next;
    if (m->comm == comm) {
      if (prev)
        prev->next = next;
      else
        head = next;
      if (tail == m) tail = prev;
      free(m);
      shim_drained_count--;
    } else {
      prev = m;
    }
    m = next;
  }
  set_drained_now();
}
