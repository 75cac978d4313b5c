/*
 * Point-to-point interposition. Sends are counted when started. Blocking
 * sends stay real blocking calls: they finish because a held receiver drains.
 * Blocking receives and probes wait on another rank's future action, which a
 * hold may withhold, so they run as nonblocking calls in a test loop that
 * watches the command word (a safe point inside the call).
 */
#include <stdlib.h>
#include <string.h>

#include "shim.h"

static inline int world_dest(MPI_Comm comm, int rank) {
  if (rank < 0) return -1;
  if (comm == MPI_COMM_WORLD) return rank;
  return shim_world_of(shim_comm_get(comm), rank);
}

/* A receive the shim posted itself completed: nobody can have cancelled it,
 * so no MPI_Test_cancelled on this hot path. */
static inline void count_recv_status(MPI_Comm comm, const MPI_Status *st) {
  if (st->MPI_SOURCE >= 0) shim_count_recvd(world_dest(comm, st->MPI_SOURCE));
}

static void track_send(MPI_Request req, int kind, int peer) {
  shim_req *e = shim_req_add(req, kind);
  if (!e) return;
  e->peer_world = peer;
  if (kind == RK_SEND) SHIM_SLOT_ADD(pending_sends, 1);
  else e->active = 0; /* persistent: inactive until MPI_Start */
}

static shim_req *track_recv(MPI_Request req, int kind, MPI_Comm comm) {
  shim_req *e = shim_req_add(req, kind);
  if (!e) return NULL;
  e->comm = shim_comm_get(comm);
  if (e->comm) e->comm->refs++;
  if (kind == RK_RECV) SHIM_SLOT_ADD(pending_recvs, 1);
  else e->active = 0;
  return e;
}

int shim_wait_test_loop(int n, MPI_Request *r, MPI_Status *sts, int all) {
  int flag = 0, rc;
  for (;;) {
    if (shim_blocked_tick()) continue;
    rc = all ? PMPI_Testall(n, r, &flag, sts) : PMPI_Test(r, &flag, sts);
    if (flag || rc != MPI_SUCCESS) return rc;
  }
}

/* ---- sends ------------------------------------------------------------- */

#define BLOCKING_SEND(NAME)                                                                \
  int MPI_##NAME(const void *buf, int count, MPI_Datatype dt, int dest, int tag,          \
                 MPI_Comm comm) {                                                          \
    SHIM_ENTER(PMPI_##NAME(buf, count, dt, dest, tag, comm));                              \
    int peer = world_dest(comm, dest);                                                     \
    shim_count_sent(peer);                                                                 \
    int rc = PMPI_##NAME(buf, count, dt, dest, tag, comm);                                 \
    if (rc != MPI_SUCCESS) shim_uncount_sent(peer); /* nothing left */                     \
    return rc;                                                                             \
  }
BLOCKING_SEND(Send)
BLOCKING_SEND(Bsend)
BLOCKING_SEND(Ssend)
BLOCKING_SEND(Rsend)

#define NB_SEND(NAME)                                                                      \
  int MPI_##NAME(const void *buf, int count, MPI_Datatype dt, int dest, int tag,          \
                 MPI_Comm comm, MPI_Request *req) {                                        \
    SHIM_ENTER(PMPI_##NAME(buf, count, dt, dest, tag, comm, req));                         \
    int peer = world_dest(comm, dest);                                                     \
    shim_count_sent(peer);                                                                 \
    int rc = PMPI_##NAME(buf, count, dt, dest, tag, comm, req);                            \
    if (rc != MPI_SUCCESS) shim_uncount_sent(peer);                                        \
    else if (peer >= 0) track_send(*req, RK_SEND, peer);                                   \
    return rc;                                                                             \
  }
NB_SEND(Isend)
NB_SEND(Ibsend)
NB_SEND(Issend)
NB_SEND(Irsend)

#define PERSISTENT_SEND(NAME)                                                              \
  int MPI_##NAME(const void *buf, int count, MPI_Datatype dt, int dest, int tag,          \
                 MPI_Comm comm, MPI_Request *req) {                                        \
    SHIM_ENTER(PMPI_##NAME(buf, count, dt, dest, tag, comm, req));                         \
    int rc = PMPI_##NAME(buf, count, dt, dest, tag, comm, req);                            \
    if (rc == MPI_SUCCESS) track_send(*req, RK_PSEND, world_dest(comm, dest));             \
    return rc;                                                                             \
  }
PERSISTENT_SEND(Send_init)
PERSISTENT_SEND(Bsend_init)
PERSISTENT_SEND(Ssend_init)
PERSISTENT_SEND(Rsend_init)

/* ---- receives ----------------------------------------------------------- */

int MPI_Recv(void *buf, int count, MPI_Datatype dt, int source, int tag, MPI_Comm comm,
             MPI_Status *status) {
  SHIM_ENTER(PMPI_Recv(buf, count, dt, source, tag, comm, status));
  if (SHIM_UNLIKELY(shim_drained_count)) {
    shim_msg *m = shim_drain_match(comm, source, tag, 1);
    if (m) return shim_msg_deliver(m, buf, count, dt, comm, status);
  }
  if (source == MPI_PROC_NULL) return PMPI_Recv(buf, count, dt, source, tag, comm, status);
  MPI_Request r;
  MPI_Status local, *st = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Irecv(buf, count, dt, source, tag, comm, &r);
  if (rc != MPI_SUCCESS) return rc;
  rc = shim_wait_test_loop(1, &r, st, 0);
  count_recv_status(comm, st);
  SHIM_BOUNDARY();
  return rc;
}

int MPI_Irecv(void *buf, int count, MPI_Datatype dt, int source, int tag, MPI_Comm comm,
              MPI_Request *req) {
  SHIM_ENTER(PMPI_Irecv(buf, count, dt, source, tag, comm, req));
  if (SHIM_UNLIKELY(shim_drained_count)) {
    shim_msg *m = shim_drain_match(comm, source, tag, 1);
    if (m) return shim_msg_irecv(m, buf, count, dt, comm, req);
  }
  int rc = PMPI_Irecv(buf, count, dt, source, tag, comm, req);
  if (rc == MPI_SUCCESS && source != MPI_PROC_NULL) track_recv(*req, RK_RECV, comm);
  return rc;
}

int MPI_Recv_init(void *buf, int count, MPI_Datatype dt, int source, int tag, MPI_Comm comm,
                  MPI_Request *req) {
  SHIM_ENTER(PMPI_Recv_init(buf, count, dt, source, tag, comm, req));
  int rc = PMPI_Recv_init(buf, count, dt, source, tag, comm, req);
  if (rc != MPI_SUCCESS) return rc;
  shim_req *e = track_recv(*req, RK_PRECV, comm);
  if (e) {
    e->buf = buf;
    e->count = count;
    e->dt = dt;
    e->src = source;
    e->tag = tag;
  }
  return rc;
}

/* Start one persistent request; a receive may be satisfied from the buffer. */
static int start_one(MPI_Request *req) {
  shim_req *e = shim_req_find(*req);
  if (e && e->kind == RK_PSEND) {
    if (e->active) return PMPI_Start(req); /* starting an active request: MPI's error */
    shim_count_sent(e->peer_world);
    e->active = 1;
    e->done = 0;
    SHIM_SLOT_ADD(pending_sends, 1);
  } else if (e && e->kind == RK_PRECV) {
    e->active = 1;
    e->done = 0;
    e->counted = 0;
    if (shim_drained_count && e->comm) {
      shim_msg *m = shim_drain_match(e->comm->comm, e->src, e->tag, 1);
      if (m) {
        /* complete it ourselves; MPI keeps an inactive request meanwhile */
        MPI_Comm comm = e->comm->comm;
        shim_msg_unpack(m, e->buf, e->count, e->dt, comm, &e->st); /* error reported at completion */
        e->shim_done = 1;
        e->done = 1;
        e->counted = 1;
        shim_shim_done_count++;
        return MPI_SUCCESS;
      }
    }
    SHIM_SLOT_ADD(pending_recvs, 1);
  }
  return PMPI_Start(req);
}

int MPI_Start(MPI_Request *req) {
  SHIM_ENTER(PMPI_Start(req));
  return start_one(req);
}

int MPI_Startall(int count, MPI_Request reqs[]) {
  SHIM_ENTER(PMPI_Startall(count, reqs));
  for (int i = 0; i < count; i++) {
    int rc = start_one(&reqs[i]);
    if (rc != MPI_SUCCESS) return rc;
  }
  return MPI_SUCCESS;
}

/* The two halves of a Sendrecv, each settled as soon as it completes: the
 * send is pending (so the agent does not freeze with it open), the receive
 * is counted the moment it lands (a held rank publishes it). Returns the
 * first error. */
static int wait_send_recv(MPI_Comm comm, MPI_Request r[2], MPI_Status sts[2], int tracked_send) {
  int rdone = 0, sdone = 0, rc = MPI_SUCCESS;
  if (tracked_send) SHIM_SLOT_ADD(pending_sends, 1);
  while (!(rdone && sdone)) {
    if (shim_blocked_tick()) continue;
    if (!rdone) {
      int e = PMPI_Test(&r[0], &rdone, &sts[0]);
      if (e != MPI_SUCCESS) rc = rc ? rc : e, rdone = 1;
      else if (rdone) count_recv_status(comm, &sts[0]);
    }
    if (!sdone) {
      int e = PMPI_Test(&r[1], &sdone, &sts[1]);
      if (e != MPI_SUCCESS) rc = rc ? rc : e, sdone = 1;
      if (sdone && tracked_send) SHIM_SLOT_ADD(pending_sends, -1);
    }
  }
  return rc;
}

/* ---- send + receive ------------------------------------------------------ */

int MPI_Sendrecv(const void *sendbuf, int sendcount, MPI_Datatype sendtype, int dest, int sendtag,
                 void *recvbuf, int recvcount, MPI_Datatype recvtype, int source, int recvtag,
                 MPI_Comm comm, MPI_Status *status) {
  SHIM_ENTER(PMPI_Sendrecv(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype, source, recvtag, comm, status));
  int peer = world_dest(comm, dest);
  MPI_Status local, *st = status == MPI_STATUS_IGNORE ? &local : status;
  shim_msg *m = shim_drained_count ? shim_drain_match(comm, source, recvtag, 1) : NULL;
  if (m) {
    shim_count_sent(peer);
    int rc = PMPI_Send(sendbuf, sendcount, sendtype, dest, sendtag, comm);
    int rc2 = shim_msg_deliver(m, recvbuf, recvcount, recvtype, comm, status);
    return rc != MPI_SUCCESS ? rc : rc2;
  }
  MPI_Request r[2];
  MPI_Status sts[2];
  int rc = PMPI_Irecv(recvbuf, recvcount, recvtype, source, recvtag, comm, &r[0]);
  if (rc != MPI_SUCCESS) return rc;
  shim_count_sent(peer);
  rc = PMPI_Isend(sendbuf, sendcount, sendtype, dest, sendtag, comm, &r[1]);
  if (rc != MPI_SUCCESS) return shim_uncount_sent(peer), rc;
  rc = wait_send_recv(comm, r, sts, peer >= 0);
  *st = sts[0];
  SHIM_BOUNDARY();
  return rc;
}

/* Scratch for Sendrecv_replace's incoming copy; grows, never on the hot path
 * of ordinary sends and receives. */
static unsigned char *replace_buf;
static size_t replace_cap;

int MPI_Sendrecv_replace(void *buf, int count, MPI_Datatype dt, int dest, int sendtag,
                         int source, int recvtag, MPI_Comm comm, MPI_Status *status) {
  SHIM_ENTER(PMPI_Sendrecv_replace(buf, count, dt, dest, sendtag, source, recvtag, comm, status));
  int peer = world_dest(comm, dest);
  shim_msg *m = shim_drained_count ? shim_drain_match(comm, source, recvtag, 1) : NULL;
  if (m) {
    shim_count_sent(peer);
    int rc = PMPI_Send(buf, count, dt, dest, sendtag, comm);
    int rc2 = shim_msg_deliver(m, buf, count, dt, comm, status);
    return rc != MPI_SUCCESS ? rc : rc2;
  }
  int bytes = 0;
  PMPI_Pack_size(count, dt, comm, &bytes);
  if ((size_t)bytes > replace_cap) {
    unsigned char *n = realloc(replace_buf, (size_t)bytes);
    if (!n) return PMPI_Comm_call_errhandler(comm, MPI_ERR_NO_MEM), MPI_ERR_NO_MEM;
    replace_buf = n;
    replace_cap = (size_t)bytes;
  }
  MPI_Request r[2];
  MPI_Status sts[2];
  int rc = PMPI_Irecv(replace_buf, bytes, MPI_PACKED, source, recvtag, comm, &r[0]);
  if (rc != MPI_SUCCESS) return rc;
  shim_count_sent(peer);
  rc = PMPI_Isend(buf, count, dt, dest, sendtag, comm, &r[1]);
  if (rc != MPI_SUCCESS) return shim_uncount_sent(peer), rc;
  rc = wait_send_recv(comm, r, sts, peer >= 0);
  int got = 0, pos = 0, one = 0;
  PMPI_Get_count(&sts[0], MPI_BYTE, &got);
  PMPI_Pack_size(1, dt, comm, &one);
  int n = one > 0 ? got / one : 0;
  if (n > 0 && sts[0].MPI_SOURCE >= 0) PMPI_Unpack(replace_buf, got, &pos, buf, n, dt, comm);
  if (status != MPI_STATUS_IGNORE) {
    status->MPI_SOURCE = sts[0].MPI_SOURCE;
    status->MPI_TAG = sts[0].MPI_TAG;
    status->MPI_ERROR = sts[0].MPI_ERROR;
    PMPI_Status_set_elements_x(status, MPI_BYTE, (MPI_Count)got);
    PMPI_Status_set_cancelled(status, 0);
  }
  SHIM_BOUNDARY();
  return rc;
}

/* ---- probes ----------------------------------------------------------------- */

int MPI_Iprobe(int source, int tag, MPI_Comm comm, int *flag, MPI_Status *status) {
  SHIM_ENTER(PMPI_Iprobe(source, tag, comm, flag, status));
  if (SHIM_UNLIKELY(shim_drained_count)) {
    shim_msg *m = shim_drain_match(comm, source, tag, 0);
    if (m) {
      *flag = 1;
      shim_msg_status(m, status);
      return MPI_SUCCESS;
    }
  }
  return PMPI_Iprobe(source, tag, comm, flag, status);
}

int MPI_Probe(int source, int tag, MPI_Comm comm, MPI_Status *status) {
  SHIM_ENTER(PMPI_Probe(source, tag, comm, status));
  if (source == MPI_PROC_NULL) return PMPI_Probe(source, tag, comm, status);
  for (;;) {
    if (shim_drained_count) {
      shim_msg *m = shim_drain_match(comm, source, tag, 0);
      if (m) {
        shim_msg_status(m, status);
        break;
      }
    }
    /* a hold step may have drained newer messages: look at the buffer again
       before asking MPI, or we would overtake them */
    uint64_t drained = shim_g.slot->drained_total;
    if (shim_blocked_tick() || shim_g.slot->drained_total != drained) continue;
    int flag = 0, rc = PMPI_Iprobe(source, tag, comm, &flag, status);
    if (rc != MPI_SUCCESS) return rc;
    if (flag) break;
  }
  SHIM_BOUNDARY();
  return MPI_SUCCESS;
}

/* A matched probe removes the message from MPI's queue: count it as received
 * now (the comm is known only here; MPI_Mrecv has none). */
static void count_matched(MPI_Comm comm, MPI_Message msg, const MPI_Status *st) {
  if (msg != MPI_MESSAGE_NO_PROC && msg != MPI_MESSAGE_NULL) count_recv_status(comm, st);
}

int MPI_Improbe(int source, int tag, MPI_Comm comm, int *flag, MPI_Message *message,
                MPI_Status *status) {
  SHIM_ENTER(PMPI_Improbe(source, tag, comm, flag, message, status));
  if (SHIM_UNLIKELY(shim_drained_count)) {
    shim_msg *m = shim_drain_match(comm, source, tag, 1);
    if (m) {
      *flag = 1;
      shim_msg_status(m, status);
      *message = shim_msg_claim(m);
      return MPI_SUCCESS;
    }
  }
  MPI_Status local, *st = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Improbe(source, tag, comm, flag, message, st);
  if (rc == MPI_SUCCESS && *flag) count_matched(comm, *message, st);
  return rc;
}

int MPI_Mprobe(int source, int tag, MPI_Comm comm, MPI_Message *message, MPI_Status *status) {
  SHIM_ENTER(PMPI_Mprobe(source, tag, comm, message, status));
  if (source == MPI_PROC_NULL) return PMPI_Mprobe(source, tag, comm, message, status);
  MPI_Status local, *st = status == MPI_STATUS_IGNORE ? &local : status;
  for (;;) {
    if (shim_drained_count) {
      shim_msg *m = shim_drain_match(comm, source, tag, 1);
      if (m) {
        shim_msg_status(m, st);
        *message = shim_msg_claim(m);
        break;
      }
    }
    uint64_t drained = shim_g.slot->drained_total; /* see MPI_Probe */
    if (shim_blocked_tick() || shim_g.slot->drained_total != drained) continue;
    int flag = 0, rc = PMPI_Improbe(source, tag, comm, &flag, message, st);
    if (rc != MPI_SUCCESS) return rc;
    if (flag) {
      count_matched(comm, *message, st);
      break;
    }
  }
  SHIM_BOUNDARY();
  return MPI_SUCCESS;
}

int MPI_Mrecv(void *buf, int count, MPI_Datatype dt, MPI_Message *message, MPI_Status *status) {
  SHIM_ENTER(PMPI_Mrecv(buf, count, dt, message, status));
  if (SHIM_UNLIKELY(shim_claimed_count) && shim_msg_is_fake(*message)) {
    shim_msg *m = shim_msg_unclaim(*message);
    MPI_Comm comm = m->comm;
    *message = MPI_MESSAGE_NULL;
    return shim_msg_deliver(m, buf, count, dt, comm, status);
  }
  /* already matched: only the data transfer is left, which the sender's
     progress finishes (a held sender keeps progressing) */
  return PMPI_Mrecv(buf, count, dt, message, status);
}

int MPI_Imrecv(void *buf, int count, MPI_Datatype dt, MPI_Message *message, MPI_Request *req) {
  SHIM_ENTER(PMPI_Imrecv(buf, count, dt, message, req));
  if (SHIM_UNLIKELY(shim_claimed_count) && shim_msg_is_fake(*message)) {
    shim_msg *m = shim_msg_unclaim(*message);
    MPI_Comm comm = m->comm;
    *message = MPI_MESSAGE_NULL;
    return shim_msg_irecv(m, buf, count, dt, comm, req);
  }
  int no_proc = *message == MPI_MESSAGE_NO_PROC;
  int rc = PMPI_Imrecv(buf, count, dt, message, req);
  if (rc == MPI_SUCCESS && !no_proc) {
    shim_req *e = shim_req_add(*req, RK_RECV);
    if (e) {
      e->counted = 1; /* counted at the matched probe */
      SHIM_SLOT_ADD(pending_recvs, 1);
    }
  }
  return rc;
}
