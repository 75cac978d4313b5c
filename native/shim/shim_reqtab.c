/*
 * Requests the application holds, so the shim can (a) count a receive when it
 * completes, whichever completion call reports it, and (b) while held, see
 * which requests completed inside MPI without completing them for the
 * application (MPI_Request_get_status does not free).
 *
 * Dense array of entries (swap-remove) + an open-addressing index of the
 * handles (linear probing, backward-shift deletion). Memory is allocated once
 * at MPI_Init; a full table marks the job as not quiescable instead of
 * allocating on the fast path.
 */
#include <stdlib.h>
#include <string.h>

#include "shim.h"

static shim_req *ents;
static uint32_t *index_; /* slot -> entry index + 1; 0 = empty */
static size_t cap, nents, mask;
int shim_shim_done_count;

static inline size_t hash_req(MPI_Request r) {
  uint64_t x = (uint64_t)(uintptr_t)r;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return (size_t)x & mask;
}

int shim_reqtab_init(size_t capacity) {
  if (capacity < 64) capacity = 64;
  size_t slots = 1;
  while (slots < capacity * 2) slots <<= 1;
  ents = calloc(capacity, sizeof *ents);
  index_ = calloc(slots, sizeof *index_);
  if (!ents || !index_) return -1;
  cap = capacity;
  mask = slots - 1;
  nents = 0;
  return 0;
}

size_t shim_req_count(void) { return nents; }
shim_req *shim_req_at(size_t i) { return i < nents ? &ents[i] : NULL; }

static size_t find_slot(MPI_Request r) {
  size_t i = hash_req(r);
  for (;;) {
    uint32_t v = index_[i];
    if (v == 0 || ents[v - 1].req == r) return i;
    i = (i + 1) & mask;
  }
}

shim_req *shim_req_find(MPI_Request r) {
  if (r == MPI_REQUEST_NULL || nents == 0) return NULL;
  uint32_t v = index_[find_slot(r)];
  return v ? &ents[v - 1] : NULL;
}

shim_req *shim_req_add(MPI_Request r, int kind) {
  if (r == MPI_REQUEST_NULL) return NULL;
  size_t s = find_slot(r);
  if (index_[s]) {
    /* Two live requests cannot share a handle, except a shared, already
       complete one: Open MPI's ob1 returns its static empty request for an
       Isend that completed inline. Nothing is pending on it: settle the entry
       we have and do not track the new one. */
    shim_req_observe(&ents[index_[s] - 1], MPI_STATUS_IGNORE);
    return NULL;
  }
  if (nents == cap) {
    shim_g.slot->flags |= SYMBIO_F_TABLE_FULL;
    shim_mark_unsupported(SYMBIO_UNSUP_TOO_MANY_REQUESTS,
                          "more outstanding requests than SYMBIO_MAX_REQUESTS");
    return NULL;
  }
  shim_req *e = &ents[nents];
  memset(e, 0, sizeof *e);
  e->req = r;
  e->kind = (uint8_t)kind;
  e->active = 1;
  e->peer_world = -1;
  index_[s] = (uint32_t)(++nents);
  return e;
}

static void index_delete(size_t i) {
  /* backward-shift deletion keeps probe chains intact without tombstones */
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    uint32_t v = index_[j];
    if (v == 0) break;
    size_t home = hash_req(ents[v - 1].req);
    /* can entry at j move to i? (its home is not cyclically in (i, j]) */
    if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
      index_[i] = v;
      i = j;
    }
  }
  index_[i] = 0;
}

void shim_req_remove(shim_req *e) {
  if (!e) return;
  size_t idx = (size_t)(e - ents);
  if (idx >= nents) return;
  if (e->shim_done) shim_shim_done_count--;
  if (e->comm) shim_comm_unref(e->comm);
  index_delete(find_slot(e->req));
  size_t last = nents - 1;
  if (idx != last) {
    ents[idx] = ents[last];
    index_[find_slot(ents[idx].req)] = (uint32_t)(idx + 1);
  }
  nents--;
}

static void pending_dec(shim_req *e) {
  switch (e->kind) {
  case RK_SEND:
  case RK_PSEND: SHIM_SLOT_ADD(pending_sends, -1); break;
  case RK_RECV:
  case RK_PRECV: SHIM_SLOT_ADD(pending_recvs, -1); break;
  case RK_COLL: SHIM_SLOT_ADD(pending_colls, -1); break;
  }
}

/* A completion the shim observed (poll while held, or the app's own call). */
void shim_req_observe(shim_req *e, const MPI_Status *st) {
  /* an inactive persistent request "completes" at once with an empty status:
     nothing was pending, nothing arrived */
  if (e->done || !e->active) return;
  e->done = 1;
  pending_dec(e);
  if ((e->kind == RK_RECV || e->kind == RK_PRECV) && !e->counted) {
    e->counted = 1;
    int cancelled = 0;
    if (e->cancel_asked && st != MPI_STATUS_IGNORE) PMPI_Test_cancelled(st, &cancelled);
    if (!cancelled && st != MPI_STATUS_IGNORE && st->MPI_SOURCE >= 0)
      shim_count_recvd(shim_world_of(e->comm, st->MPI_SOURCE));
  }
  if ((e->kind == RK_SEND || e->kind == RK_PSEND) && e->cancel_asked && st != MPI_STATUS_IGNORE) {
    int cancelled = 0;
    PMPI_Test_cancelled(st, &cancelled);
    if (cancelled) shim_uncount_sent(e->peer_world);
  }
}

void shim_req_completed(shim_req *e, const MPI_Status *st) {
  if (!e->active) return; /* inactive persistent: stays as it is */
  shim_req_observe(e, st);
  if (e->kind == RK_PSEND || e->kind == RK_PRECV) {
    /* persistent: stays allocated, becomes inactive */
    if (e->shim_done) shim_shim_done_count--;
    e->active = 0;
    e->done = 0;
    e->counted = 0;
    e->shim_done = 0;
    e->cancel_asked = 0;
  } else {
    shim_req_remove(e);
  }
}

int shim_req_poll_all(void) {
  int moved = 0;
  for (size_t i = 0; i < nents; i++) {
    shim_req *e = &ents[i];
    if (!e->active || e->done || e->shim_done) continue;
    int flag = 0;
    MPI_Status st;
    if (PMPI_Request_get_status(e->req, &flag, &st) == MPI_SUCCESS && flag) {
      shim_change_begin();
      shim_req_observe(e, &st);
      moved = 1;
    }
  }
  return moved;
}
