/*
 * Communicators the rank belongs to: where to drain from, how to translate
 * ranks to world ranks for the per-peer counters, and a communicator id (gid)
 * that every member computes identically, so the agent can compare the
 * members' collective counts.
 *
 * gid = mix(creation number, hash of the member world ranks). The creation
 * number is agreed on at creation with one MAX-allreduce of a per-process
 * counter over the new communicator (creation is collective and slow anyway),
 * so two communicators over the same group get different ids and the same id
 * on every member.
 */
#include <stdlib.h>
#include <string.h>

#include "shim.h"

static shim_comm **comms;
static int ncomms, capcomms;
static shim_comm *last_hit;
static uint64_t creation_counter;

int shim_comm_count(void) { return ncomms; }
shim_comm *shim_comm_at(int i) { return i >= 0 && i < ncomms ? comms[i] : NULL; }

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

shim_comm *shim_comm_find(MPI_Comm comm) {
  if (last_hit && last_hit->comm == comm && !last_hit->dead) return last_hit;
  for (int i = 0; i < ncomms; i++)
    if (comms[i]->comm == comm && !comms[i]->dead) return last_hit = comms[i];
  return NULL;
}

static shim_comm *add_entry(MPI_Comm comm, uint64_t gid) {
  if (ncomms == capcomms) {
    int nc = capcomms ? capcomms * 2 : 16;
    shim_comm **n = realloc(comms, (size_t)nc * sizeof *n);
    if (!n) return NULL;
    comms = n;
    capcomms = nc;
  }
  shim_comm *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->comm = comm;
  c->gid = gid;
  c->pub = shim_pub_add(gid);
  comms[ncomms++] = c;
  return c;
}

/* World ranks of `group`, in group order; NULL on failure. */
static int *world_ranks_of(MPI_Group group, int n) {
  MPI_Group wg;
  int *in = malloc((size_t)n * sizeof(int)), *out = malloc((size_t)n * sizeof(int));
  if (!in || !out) {
    free(in);
    free(out);
    return NULL;
  }
  for (int i = 0; i < n; i++) in[i] = i;
  PMPI_Comm_group(MPI_COMM_WORLD, &wg);
  PMPI_Group_translate_ranks(group, n, in, wg, out);
  PMPI_Group_free(&wg);
  free(in);
  return out;
}

static uint64_t hash_ranks(const int *r, int n) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
  for (int i = 0; i < n; i++) h = mix64(h ^ (uint64_t)(uint32_t)r[i]);
  return h;
}

/* Fill size/maps of c; returns the hash of the member world ranks. */
static uint64_t describe(shim_comm *c, MPI_Comm comm, int *is_inter) {
  MPI_Group g;
  int inter = 0;
  PMPI_Comm_test_inter(comm, &inter);
  *is_inter = inter;
  PMPI_Comm_size(comm, &c->size);
  PMPI_Comm_group(comm, &g);
  int *local = world_ranks_of(g, c->size);
  PMPI_Group_free(&g);
  uint64_t h = local ? hash_ranks(local, c->size) : 0;
  if (inter) {
    PMPI_Comm_remote_size(comm, &c->remote_size);
    PMPI_Comm_remote_group(comm, &g);
    c->world_of = world_ranks_of(g, c->remote_size);
    PMPI_Group_free(&g);
    uint64_t rh = c->world_of ? hash_ranks(c->world_of, c->remote_size) : 0;
    h ^= rh; /* symmetric: both sides compute the same */
    free(local);
  } else if (comm == MPI_COMM_WORLD) {
    free(local);
  } else {
    c->world_of = local;
  }
  return h;
}

/* A new communicator created collectively by all its members. */
static void register_created(MPI_Comm comm) {
  if (comm == MPI_COMM_NULL || !shim_g.inited) return;
  shim_comm tmp = {0};
  int inter = 0;
  uint64_t h = describe(&tmp, comm, &inter);
  uint64_t mine = creation_counter + 1, agreed = mine;
  if (inter) {
    /* an allreduce over an intercomm returns the other side's result, so
       two rounds give both sides max(local max, remote max) */
    uint64_t remote_max = 0, local_max = 0;
    PMPI_Allreduce(&mine, &remote_max, 1, MPI_UINT64_T, MPI_MAX, comm);
    PMPI_Allreduce(&remote_max, &local_max, 1, MPI_UINT64_T, MPI_MAX, comm);
    agreed = remote_max > local_max ? remote_max : local_max;
  } else {
    PMPI_Allreduce(&mine, &agreed, 1, MPI_UINT64_T, MPI_MAX, comm);
  }
  creation_counter = agreed;
  shim_comm *c = add_entry(comm, mix64(agreed ^ h) | 1ull);
  if (!c) {
    free(tmp.world_of);
    return;
  }
  c->size = tmp.size;
  c->remote_size = tmp.remote_size;
  c->world_of = tmp.world_of;
}

void shim_comm_init(void) {
  shim_comm *w = add_entry(MPI_COMM_WORLD, 1);
  if (w) PMPI_Comm_size(MPI_COMM_WORLD, &w->size);
  /* MPI_COMM_SELF: one member; an id nobody else has */
  shim_comm *s = add_entry(MPI_COMM_SELF, mix64(0x5e1full << 32 | (uint64_t)shim_g.world_rank) | 1ull);
  if (s) {
    s->size = 1;
    s->world_of = malloc(sizeof(int));
    if (s->world_of) s->world_of[0] = shim_g.world_rank;
  }
}

shim_comm *shim_comm_get(MPI_Comm comm) {
  shim_comm *c = shim_comm_find(comm);
  if (c || comm == MPI_COMM_NULL || !shim_g.inited) return c;
  /* created through a path we do not intercept: track it for counting and
     draining, with an id only this rank knows */
  shim_comm tmp = {0};
  int inter = 0;
  uint64_t h = describe(&tmp, comm, &inter);
  c = add_entry(comm, mix64(h ^ (uint64_t)(uintptr_t)comm ^ 0x1a2bull) | 1ull);
  if (!c) {
    free(tmp.world_of);
    return NULL;
  }
  c->size = tmp.size;
  c->remote_size = tmp.remote_size;
  c->world_of = tmp.world_of;
  return c;
}

static void destroy(shim_comm *c) {
  free(c->world_of);
  free(c);
}

void shim_comm_unref(shim_comm *c) {
  if (--c->refs == 0 && c->dead) destroy(c);
}

static void forget(MPI_Comm comm) {
  if (shim_drained_count) shim_drain_forget(comm);
  for (int i = 0; i < ncomms; i++) {
    shim_comm *c = comms[i];
    if (c->comm != comm || c->dead) continue;
    shim_pub_remove(c->pub);
    c->pub = -1;
    comms[i] = comms[--ncomms];
    if (last_hit == c) last_hit = NULL;
    c->dead = 1;
    if (c->refs == 0) destroy(c);
    return;
  }
}

void shim_coll_enter(MPI_Comm comm) {
  shim_comm *c = shim_comm_get(comm);
  if (c) shim_pub_seq_inc(c->pub);
  SHIM_SLOT_SET(flags, shim_g.slot->flags | SYMBIO_F_IN_COLL);
}

void shim_coll_leave(void) {
  SHIM_SLOT_SET(flags, shim_g.slot->flags & ~SYMBIO_F_IN_COLL);
  SHIM_SAFE_POINT(); /* hold at the exit boundary (also ends a catch-up) */
}

/* ---- communicator constructors: collectives on the parent ------------- */

#define CREATE_ON(parent, call, out)       \
  do {                                     \
    SHIM_ENTER(call);                      \
    shim_coll_enter(parent);               \
    int rc_ = call;                        \
    if (rc_ == MPI_SUCCESS) register_created(*(out)); \
    shim_coll_leave();                     \
    return rc_;                            \
  } while (0)

int MPI_Comm_dup(MPI_Comm comm, MPI_Comm *newcomm) {
  CREATE_ON(comm, PMPI_Comm_dup(comm, newcomm), newcomm);
}
int MPI_Comm_dup_with_info(MPI_Comm comm, MPI_Info info, MPI_Comm *newcomm) {
  CREATE_ON(comm, PMPI_Comm_dup_with_info(comm, info, newcomm), newcomm);
}
int MPI_Comm_split(MPI_Comm comm, int color, int key, MPI_Comm *newcomm) {
  CREATE_ON(comm, PMPI_Comm_split(comm, color, key, newcomm), newcomm);
}
int MPI_Comm_split_type(MPI_Comm comm, int split_type, int key, MPI_Info info, MPI_Comm *newcomm) {
  CREATE_ON(comm, PMPI_Comm_split_type(comm, split_type, key, info, newcomm), newcomm);
}
int MPI_Comm_create(MPI_Comm comm, MPI_Group group, MPI_Comm *newcomm) {
  CREATE_ON(comm, PMPI_Comm_create(comm, group, newcomm), newcomm);
}
int MPI_Cart_create(MPI_Comm old_comm, int ndims, const int dims[], const int periods[],
                    int reorder, MPI_Comm *comm_cart) {
  CREATE_ON(old_comm, PMPI_Cart_create(old_comm, ndims, dims, periods, reorder, comm_cart),
            comm_cart);
}
int MPI_Cart_sub(MPI_Comm comm, const int remain_dims[], MPI_Comm *new_comm) {
  CREATE_ON(comm, PMPI_Cart_sub(comm, remain_dims, new_comm), new_comm);
}
int MPI_Graph_create(MPI_Comm comm_old, int nnodes, const int index[], const int edges[],
                     int reorder, MPI_Comm *comm_graph) {
  CREATE_ON(comm_old, PMPI_Graph_create(comm_old, nnodes, index, edges, reorder, comm_graph),
            comm_graph);
}
int MPI_Dist_graph_create(MPI_Comm comm_old, int n, const int nodes[], const int degrees[],
                          const int targets[], const int weights[], MPI_Info info, int reorder,
                          MPI_Comm *newcomm) {
  CREATE_ON(comm_old,
            PMPI_Dist_graph_create(comm_old, n, nodes, degrees, targets, weights, info, reorder,
                                   newcomm),
            newcomm);
}
int MPI_Dist_graph_create_adjacent(MPI_Comm comm_old, int indegree, const int sources[],
                                   const int sourceweights[], int outdegree,
                                   const int destinations[], const int destweights[],
                                   MPI_Info info, int reorder, MPI_Comm *comm_dist_graph) {
  CREATE_ON(comm_old,
            PMPI_Dist_graph_create_adjacent(comm_old, indegree, sources, sourceweights, outdegree,
                                            destinations, destweights, info, reorder,
                                            comm_dist_graph),
            comm_dist_graph);
}
/* The leaders' handshake travels on the bridge communicator with the
 * application's tag, unseen by our counters: a held peer's drain could take
 * it. Quiesce is refused for jobs that create intercommunicators. The refusal
 * alone is not enough: the other leader may still be held (it has not got
 * here yet) and drain Open MPI's first handshake message, and the job fails.
 * So the leaders first exchange a message of ours, received through the shim
 * (which sees what a drain took); after it both leaders refuse holds, and
 * nothing drains Open MPI's handshake. */
int MPI_Intercomm_create(MPI_Comm local_comm, int local_leader, MPI_Comm bridge_comm,
                         int remote_leader, int tag, MPI_Comm *newintercomm) {
  if (!shim_g.passthrough) {
    shim_mark_unsupported(SYMBIO_UNSUP_DYNAMIC, "MPI_Intercomm_create (intercommunicators)");
    int me = -1;
    if (local_comm != MPI_COMM_NULL && PMPI_Comm_rank(local_comm, &me) == MPI_SUCCESS &&
        me == local_leader) {
      int out = 0, in = 0;
      int rc = MPI_Sendrecv(&out, 1, MPI_INT, remote_leader, tag, &in, 1, MPI_INT, remote_leader,
                            tag, bridge_comm, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return rc;
    }
  }
  CREATE_ON(local_comm,
            PMPI_Intercomm_create(local_comm, local_leader, bridge_comm, remote_leader, tag,
                                  newintercomm),
            newintercomm);
}
int MPI_Intercomm_merge(MPI_Comm intercomm, int high, MPI_Comm *newintracomm) {
  CREATE_ON(intercomm, PMPI_Intercomm_merge(intercomm, high, newintracomm), newintracomm);
}

/* Collective over the group's members only, not over the parent. */
int MPI_Comm_create_group(MPI_Comm comm, MPI_Group group, int tag, MPI_Comm *newcomm) {
  SHIM_ENTER(PMPI_Comm_create_group(comm, group, tag, newcomm));
  SHIM_SLOT_SET(flags, shim_g.slot->flags | SYMBIO_F_IN_COLL);
  int rc = PMPI_Comm_create_group(comm, group, tag, newcomm);
  if (rc == MPI_SUCCESS) register_created(*newcomm);
  shim_coll_leave();
  return rc;
}

int MPI_Comm_idup(MPI_Comm comm, MPI_Comm *newcomm, MPI_Request *request) {
  SHIM_ENTER(PMPI_Comm_idup(comm, newcomm, request));
  shim_mark_unsupported(SYMBIO_UNSUP_COMM_IDUP, "MPI_Comm_idup");
  return PMPI_Comm_idup(comm, newcomm, request);
}

int MPI_Comm_free(MPI_Comm *comm) {
  SHIM_ENTER(PMPI_Comm_free(comm));
  MPI_Comm c = comm ? *comm : MPI_COMM_NULL;
  int rc = PMPI_Comm_free(comm);
  if (rc == MPI_SUCCESS) forget(c);
  return rc;
}

int MPI_Comm_disconnect(MPI_Comm *comm) {
  SHIM_ENTER(PMPI_Comm_disconnect(comm));
  MPI_Comm c = comm ? *comm : MPI_COMM_NULL;
  int rc = PMPI_Comm_disconnect(comm);
  if (rc == MPI_SUCCESS) forget(c);
  return rc;
}
