/*
 * Completion calls. Every completion of a tracked request goes through
 * shim_req_completed (counts receives once, even if the hold poll saw them
 * first). Blocking waits are test loops so a rank waiting on a held peer is
 * at a safe point. Persistent receives the shim satisfied from its drain
 * buffer ("shim_done") are inactive inside MPI; their status comes from us.
 */
#include <stdlib.h>
#include <string.h>

#include "shim.h"

/* Copies of handles (completion nulls them) and statuses for IGNORE. */
typedef struct scratch {
  MPI_Request *h;
  MPI_Status *s;
  int heap;
} scratch;

static int scratch_get(scratch *sc, int n, MPI_Request *reqs, MPI_Status *app_sts) {
  sc->heap = 0;
  if (n <= SHIM_SCRATCH) {
    sc->h = shim_scratch_reqs;
    sc->s = app_sts == MPI_STATUSES_IGNORE ? shim_scratch_sts : app_sts;
  } else {
    sc->heap = 1;
    sc->h = malloc((size_t)n * sizeof *sc->h);
    sc->s = app_sts == MPI_STATUSES_IGNORE ? malloc((size_t)n * sizeof *sc->s) : app_sts;
    if (!sc->h || !sc->s) return -1;
  }
  if (n > 0) memcpy(sc->h, reqs, (size_t)n * sizeof *reqs);
  return 0;
}

static void scratch_put(scratch *sc, MPI_Status *app_sts) {
  if (!sc->heap) return;
  free(sc->h);
  if (app_sts == MPI_STATUSES_IGNORE) free(sc->s);
}

/* Returns the error of a completion the shim made itself (else MPI_SUCCESS). */
static int complete_handle(MPI_Request h, MPI_Status *st) {
  shim_req *e = shim_req_find(h);
  if (!e) return MPI_SUCCESS;
  int rc = e->shim_done ? e->st.MPI_ERROR : MPI_SUCCESS;
  MPI_Comm comm = e->shim_done && e->comm ? e->comm->comm : MPI_COMM_NULL;
  if (e->shim_done && st != MPI_STATUS_IGNORE) *st = e->st;
  shim_req_completed(e, st);
  if (rc != MPI_SUCCESS && comm != MPI_COMM_NULL) PMPI_Comm_call_errhandler(comm, rc);
  return rc;
}

/* A shim_done request among reqs[0..n)? Returns its index or -1. */
static int find_shim_done(int n, MPI_Request *reqs) {
  if (SHIM_LIKELY(shim_shim_done_count == 0)) return -1;
  for (int i = 0; i < n; i++) {
    shim_req *e = shim_req_find(reqs[i]);
    if (e && e->shim_done) return i;
  }
  return -1;
}

int MPI_Wait(MPI_Request *req, MPI_Status *status) {
  SHIM_ENTER(PMPI_Wait(req, status));
  MPI_Request h = *req;
  MPI_Status local, *st = status == MPI_STATUS_IGNORE ? &local : status;
  if (find_shim_done(1, req) == 0) return complete_handle(h, st);
  int rc = shim_wait_test_loop(1, req, st, 0);
  complete_handle(h, st);
  SHIM_BOUNDARY();
  return rc;
}

int MPI_Test(MPI_Request *req, int *flag, MPI_Status *status) {
  SHIM_ENTER(PMPI_Test(req, flag, status));
  MPI_Request h = *req;
  MPI_Status local, *st = status == MPI_STATUS_IGNORE ? &local : status;
  if (find_shim_done(1, req) == 0) {
    *flag = 1;
    return complete_handle(h, st);
  }
  int rc = PMPI_Test(req, flag, st);
  if (*flag) complete_handle(h, st);
  return rc;
}

int MPI_Request_get_status(MPI_Request req, int *flag, MPI_Status *status) {
  SHIM_ENTER(PMPI_Request_get_status(req, flag, status));
  shim_req *e = shim_req_find(req);
  if (e && e->shim_done) {
    *flag = 1;
    if (status != MPI_STATUS_IGNORE) *status = e->st;
    return MPI_SUCCESS;
  }
  MPI_Status local, *st = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Request_get_status(req, flag, st);
  if (*flag && e) shim_req_observe(e, st);
  return rc;
}

int MPI_Waitall(int n, MPI_Request reqs[], MPI_Status *statuses) {
  SHIM_ENTER(PMPI_Waitall(n, reqs, statuses));
  scratch sc;
  if (scratch_get(&sc, n, reqs, statuses) != 0) {
    scratch_put(&sc, statuses);
    return PMPI_Waitall(n, reqs, statuses); /* no memory: correct but unwatched */
  }
  int rc = shim_wait_test_loop(n, reqs, sc.s, 1);
  for (int i = 0; i < n; i++) {
    /* with MPI_ERR_IN_STATUS some requests may still be live */
    if (rc == MPI_ERR_IN_STATUS && sc.s[i].MPI_ERROR == MPI_ERR_PENDING) continue;
    complete_handle(sc.h[i], &sc.s[i]);
  }
  scratch_put(&sc, statuses);
  SHIM_BOUNDARY();
  return rc;
}

int MPI_Testall(int n, MPI_Request reqs[], int *flag, MPI_Status *statuses) {
  SHIM_ENTER(PMPI_Testall(n, reqs, flag, statuses));
  scratch sc;
  if (scratch_get(&sc, n, reqs, statuses) != 0) {
    scratch_put(&sc, statuses);
    return PMPI_Testall(n, reqs, flag, statuses);
  }
  int rc = PMPI_Testall(n, reqs, flag, sc.s);
  if (*flag)
    for (int i = 0; i < n; i++) complete_handle(sc.h[i], &sc.s[i]);
  scratch_put(&sc, statuses);
  return rc;
}

static int any_common(int n, MPI_Request reqs[], int *index, int *flag, MPI_Status *status,
                      int blocking) {
  MPI_Status local, *st = status == MPI_STATUS_IGNORE ? &local : status;
  int d = find_shim_done(n, reqs);
  if (d >= 0) {
    *index = d;
    *flag = 1;
    complete_handle(reqs[d], st);
    return MPI_SUCCESS;
  }
  scratch sc;
  if (scratch_get(&sc, n, reqs, MPI_STATUSES_IGNORE) != 0) {
    scratch_put(&sc, MPI_STATUSES_IGNORE);
    return blocking ? PMPI_Waitany(n, reqs, index, status)
                    : PMPI_Testany(n, reqs, index, flag, status);
  }
  int rc;
  for (;;) {
    if (blocking && shim_blocked_tick()) continue;
    rc = PMPI_Testany(n, reqs, index, flag, st);
    if (*flag || rc != MPI_SUCCESS || !blocking) break;
  }
  if (*flag && *index != MPI_UNDEFINED && *index >= 0 && *index < n)
    complete_handle(sc.h[*index], st);
  scratch_put(&sc, MPI_STATUSES_IGNORE);
  return rc;
}

int MPI_Waitany(int n, MPI_Request reqs[], int *index, MPI_Status *status) {
  SHIM_ENTER(PMPI_Waitany(n, reqs, index, status));
  int flag = 0;
  int rc = any_common(n, reqs, index, &flag, status, 1);
  SHIM_BOUNDARY();
  return rc;
}

int MPI_Testany(int n, MPI_Request reqs[], int *index, int *flag, MPI_Status *status) {
  SHIM_ENTER(PMPI_Testany(n, reqs, index, flag, status));
  return any_common(n, reqs, index, flag, status, 0);
}

static int some_common(int n, MPI_Request reqs[], int *outcount, int indices[],
                       MPI_Status statuses[], int blocking) {
  scratch sc;
  if (scratch_get(&sc, n, reqs, statuses) != 0) {
    scratch_put(&sc, statuses);
    return blocking ? PMPI_Waitsome(n, reqs, outcount, indices, statuses)
                    : PMPI_Testsome(n, reqs, outcount, indices, statuses);
  }
  /* our own completions first, then whatever MPI has */
  int k = 0;
  if (shim_shim_done_count) {
    for (int i = 0; i < n; i++) {
      shim_req *e = shim_req_find(reqs[i]);
      if (e && e->shim_done) {
        indices[k] = i;
        complete_handle(reqs[i], &sc.s[k]);
        k++;
      }
    }
  }
  int rc = MPI_SUCCESS, got = 0;
  for (;;) {
    if (blocking && k == 0 && shim_blocked_tick()) continue;
    rc = PMPI_Testsome(n, reqs, &got, indices + k, sc.s + k);
    if (rc != MPI_SUCCESS || !blocking || k > 0 || got != 0) break;
  }
  if (got == MPI_UNDEFINED) {
    *outcount = k > 0 ? k : MPI_UNDEFINED;
  } else {
    for (int j = k; j < k + got; j++)
      if (indices[j] >= 0 && indices[j] < n) complete_handle(sc.h[indices[j]], &sc.s[j]);
    *outcount = k + got;
  }
  scratch_put(&sc, statuses);
  return rc;
}

int MPI_Waitsome(int n, MPI_Request reqs[], int *outcount, int indices[], MPI_Status statuses[]) {
  SHIM_ENTER(PMPI_Waitsome(n, reqs, outcount, indices, statuses));
  int rc = some_common(n, reqs, outcount, indices, statuses, 1);
  SHIM_BOUNDARY();
  return rc;
}

int MPI_Testsome(int n, MPI_Request reqs[], int *outcount, int indices[], MPI_Status statuses[]) {
  SHIM_ENTER(PMPI_Testsome(n, reqs, outcount, indices, statuses));
  return some_common(n, reqs, outcount, indices, statuses, 0);
}

int MPI_Request_free(MPI_Request *req) {
  SHIM_ENTER(PMPI_Request_free(req));
  shim_req *e = shim_req_find(*req);
  if (e) {
    /* an active request freed by the application completes unseen: stop
       waiting for it (a receive that still arrives later will leave the
       counters unbalanced and that quiesce stalls, then resumes) */
    if (e->active && !e->done) shim_req_observe(e, MPI_STATUS_IGNORE);
    shim_req_remove(e);
  }
  return PMPI_Request_free(req);
}

int MPI_Cancel(MPI_Request *req) {
  SHIM_ENTER(PMPI_Cancel(req));
  shim_req *e = shim_req_find(*req);
  if (e && e->shim_done) return MPI_SUCCESS; /* complete already */
  if (e) e->cancel_asked = 1;
  return PMPI_Cancel(req);
}
