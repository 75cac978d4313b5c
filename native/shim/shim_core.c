/*
 * The rank side of the quiesce contract: attaching to the control segment,
 * holding at safe points, freezing, and resuming by itself when the agent is
 * gone or RESUME does not come in time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

static const uint32_t local_run = SYMBIO_CMD_WORD(0, SYMBIO_CMD_RUN);
static symbio_slot_fixed local_slot; /* used when not attached */

shim_globals shim_g = {
    .cmdp = &local_run,
    .slot = &local_slot,
    .agent_pidfd = -1,
};

MPI_Request shim_scratch_reqs[SHIM_SCRATCH];
MPI_Status shim_scratch_sts[SHIM_SCRATCH];

/* How long an idle held rank sleeps before looking at MPI again. */
#define HELD_IDLE_SPINS 16
#define HELD_SLEEP_NS 500000ull      /* 0.5 ms */
#define FROZEN_SLEEP_NS 50000000ull  /* 50 ms: liveness checks while frozen */
#define LIVE_CHECK_EVERY_NS 20000000ull

uint64_t shim_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void shim_log(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = snprintf(line, sizeof line, "symbio-shim: rank %d: ", shim_g.world_rank);
  if (n < 0) n = 0;
  vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  size_t len = strnlen(line, sizeof line - 2);
  line[len++] = '\n';
  /* one write() so lines from many ranks do not interleave */
  ssize_t w = write(2, line, len);
  (void)w;
}

static long futex(uint32_t *addr, int op, uint32_t val, const struct timespec *ts) {
  return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

/* change_seq is a seqlock: odd while the slow path updates the slot, even
 * when done, so the agent's double collect never takes a half-made update
 * for a consistent one. (A running rank's fast-path counter updates are not
 * bracketed: the coordinator never trusts a rank that is not held.) */
void shim_change_begin(void) {
  if (!shim_g.attached) return;
  uint32_t s = shim_g.slot->change_seq;
  if (s & 1u) return;
  __atomic_store_n(&shim_g.slot->change_seq, s + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
}

void shim_changed(void) {
  if (!shim_g.attached) return;
  shim_g.tally_published = shim_g.tally;
  uint32_t s = shim_g.slot->change_seq;
  __atomic_store_n(&shim_g.slot->change_seq, s + ((s & 1u) ? 1u : 2u), __ATOMIC_RELEASE);
  __atomic_fetch_add(&shim_g.hdr->agent_wake, 1, __ATOMIC_RELEASE);
  futex(&shim_g.hdr->agent_wake, FUTEX_WAKE, 1, NULL);
}

static void set_state(uint32_t st) {
  if (shim_g.slot->state == st) return;
  shim_change_begin();
  uint64_t now = shim_now_ns();
  if (st == SYMBIO_ST_HELD) SHIM_SLOT_SET(held_ns, now);
  if (st == SYMBIO_ST_FROZEN) SHIM_SLOT_SET(frozen_ns, now);
  if (st == SYMBIO_ST_RUNNING) SHIM_SLOT_SET(resumed_ns, now);
  __atomic_store_n(&shim_g.slot->state, st, __ATOMIC_RELEASE);
  shim_changed();
}

void shim_mark_unsupported(int reason, const char *what) {
  if (shim_g.unsupported) return; /* say it once */
  shim_g.unsupported = reason;
  shim_log("%s is not supported by symbio's quiesce; this job runs normally but refuses "
           "quiesce requests",
           what);
  if (shim_g.attached) {
    SHIM_SLOT_SET(unsupported, (uint32_t)reason);
    SHIM_SLOT_SET(flags, shim_g.slot->flags | SYMBIO_F_UNSUPPORTED);
    shim_changed();
  }
}

/* ---- publishing communicators ---------------------------------------- */

int shim_pub_add(uint64_t gid) {
  if (!shim_g.attached) return -1;
  uint32_t n = shim_g.ncomms;
  if (n >= SYMBIO_MAX_COMMS) {
    shim_mark_unsupported(SYMBIO_UNSUP_TOO_MANY_COMMS, "more than 64 live communicators");
    return -1;
  }
  shim_g.slot->comms[n].gid = gid;
  shim_g.slot->comms[n].seq = 0;
  shim_g.ncomms = n + 1;
  __atomic_store_n(&shim_g.slot->ncomms, n + 1, __ATOMIC_RELEASE);
  return (int)n;
}

void shim_pub_remove(int pub) {
  if (!shim_g.attached || pub < 0) return;
  uint32_t n = shim_g.ncomms;
  if ((uint32_t)pub >= n) return;
  uint32_t last = n - 1;
  if ((uint32_t)pub != last) {
    /* move the last entry into the hole and repoint its owner */
    shim_g.slot->comms[pub] = shim_g.slot->comms[last];
    for (int i = 0; i < shim_comm_count(); i++) {
      shim_comm *c = shim_comm_at(i);
      if (c && c->pub == (int)last) c->pub = pub;
    }
  }
  shim_g.ncomms = last;
  __atomic_store_n(&shim_g.slot->ncomms, last, __ATOMIC_RELEASE);
}

void shim_pub_seq_inc(int pub) {
  if (pub < 0) return;
  uint64_t *p = &shim_g.slot->comms[pub].seq;
  __atomic_store_n(p, *p + 1, __ATOMIC_RELAXED);
}

/* ---- attach / detach --------------------------------------------------- */

static int env_int(const char *name, int dflt) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  char *end;
  long x = strtol(v, &end, 10);
  if (*end || x < 0 || x > 1 << 30) return dflt;
  return (int)x;
}

static void use_private_counters(void) {
  /* counters still need a home when we are not attached */
  size_t n = shim_g.world_size > 0 ? (size_t)shim_g.world_size : 1;
  uint64_t *mem = calloc(2 * n, sizeof(uint64_t));
  if (!mem) {
    shim_log("out of memory for counters; aborting");
    PMPI_Abort(MPI_COMM_WORLD, 70);
  }
  shim_g.sent = mem;
  shim_g.recvd = mem + n;
  shim_g.slot = &local_slot;
  shim_g.cmdp = &local_run;
  shim_g.attached = 0;
}

static int pidfd_open_agent(pid_t pid) {
#ifdef SYS_pidfd_open
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) return fd;
#endif
  return -1;
}

/* Map and validate the segment; claim our slot. 0 on success. */
static int attach_segment(const char *name) {
  int fd = shm_open(name, O_RDWR, 0);
  if (fd < 0) {
    shim_log("cannot open control segment %s: %s; running without quiesce support", name,
             strerror(errno));
    return -1;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0 || sb.st_size < (off_t)SYMBIO_HEADER_BYTES) {
    shim_log("control segment %s is too small (%lld bytes); running without quiesce support",
             name, (long long)sb.st_size);
    close(fd);
    return -1;
  }
  size_t bytes = (size_t)sb.st_size;
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    shim_log("cannot map control segment %s: %s", name, strerror(errno));
    return -1;
  }
  symbio_seg_header *h = p;
  const char *bad = symbio_header_problem(h, bytes);
  if (bad) {
    shim_log("control segment %s is invalid: %s; running without quiesce support", name, bad);
    munmap(p, bytes);
    return -1;
  }
  int slot = env_int("SYMBIO_SLOT", env_int("OMPI_COMM_WORLD_LOCAL_RANK", -1));
  if (slot < 0 || (uint32_t)slot >= h->slot_count) {
    shim_log("no slot for this rank (local rank %d, segment has %u slots); running without "
             "quiesce support",
             slot, h->slot_count);
    munmap(p, bytes);
    return -1;
  }
  if ((uint32_t)shim_g.world_size > h->world_size) {
    shim_log("job has %d ranks but the segment counts only %u; running without quiesce support",
             shim_g.world_size, h->world_size);
    munmap(p, bytes);
    return -1;
  }
  symbio_slot_fixed *s = symbio_slot_at(h, (uint32_t)slot);
  /* claim by pid (free, or left by a dead process); state is published last,
     so a reader never sees a claimed slot without its pid */
  int32_t old = __atomic_load_n(&s->pid, __ATOMIC_ACQUIRE);
  if ((old > 0 && kill(old, 0) == 0 && old != (int32_t)getpid()) ||
      !__atomic_compare_exchange_n(&s->pid, &old, (int32_t)getpid(), 0, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    shim_log("slot %d is taken by live pid %d; running without quiesce support", slot, old);
    munmap(p, bytes);
    return -1;
  }
  __atomic_store_n(&s->state, SYMBIO_ST_EMPTY, __ATOMIC_RELEASE);
  /* reset everything we own, then publish */
  uint64_t *sent = symbio_slot_sent(s);
  memset(sent, 0, 16ull * h->world_size);
  s->flags = 0;
  s->world_rank = shim_g.world_rank;
  s->world_size = shim_g.world_size;
  s->ack_epoch = SYMBIO_CMD_EPOCH(__atomic_load_n(&h->cmd, __ATOMIC_ACQUIRE));
  s->unsupported = 0;
  s->autoresume_reason = 0;
  s->ncomms = 0;
  shim_g.ncomms = 0;
  s->pending_sends = s->pending_recvs = s->pending_colls = 0;
  s->drained_now = 0;
  s->drained_total = 0;
  s->pmpi_calls = 0;
  s->autoresumes = 0;
  shim_g.hdr = h;
  shim_g.map_bytes = bytes;
  shim_g.slot = s;
  shim_g.sent = sent;
  shim_g.recvd = sent + h->world_size;
  shim_g.agent_pid = h->agent_pid;
  shim_g.agent_pidfd = h->agent_pid > 0 ? pidfd_open_agent(h->agent_pid) : -1;
  shim_g.attached = 1;
  __atomic_store_n(&s->state, SYMBIO_ST_RUNNING, __ATOMIC_RELEASE);
  /* an epoch already in progress when we start is not ours to act on */
  uint32_t w = __atomic_load_n(&h->cmd, __ATOMIC_ACQUIRE);
  if (SYMBIO_CMD_OF(w) != SYMBIO_CMD_RUN) {
    shim_g.ignore_epoch = SYMBIO_CMD_EPOCH(w);
    shim_g.have_ignore = 1;
  }
  shim_g.run_word = SYMBIO_CMD_OF(w) == SYMBIO_CMD_RUN ? w : SYMBIO_CMD_WORD(0, SYMBIO_CMD_RUN);
  shim_g.cmdp = &h->cmd;
  return 0;
}

int shim_attach_after_init(int provided) {
  shim_g.verbose = env_int("SYMBIO_SHIM_VERBOSE", 0);
  PMPI_Comm_rank(MPI_COMM_WORLD, &shim_g.world_rank);
  PMPI_Comm_size(MPI_COMM_WORLD, &shim_g.world_size);
  if (shim_reqtab_init((size_t)env_int("SYMBIO_MAX_REQUESTS", 16384)) != 0) {
    shim_log("out of memory for the request table; aborting");
    PMPI_Abort(MPI_COMM_WORLD, 70);
  }
  const char *name = getenv("SYMBIO_SEGMENT");
  if (!name || !*name || attach_segment(name) != 0) use_private_counters();
  shim_g.inited = 1;
  shim_comm_init();
  if (provided == MPI_THREAD_MULTIPLE) {
    shim_mark_unsupported(SYMBIO_UNSUP_THREAD_MULTIPLE, "MPI_THREAD_MULTIPLE");
    shim_g.passthrough = 1; /* our tables are not thread-safe: hands off */
  }
  if (shim_g.attached) shim_changed(); /* tells the agent we are here */
  if (shim_g.verbose) shim_log("attached=%d world=%d", shim_g.attached, shim_g.world_size);
  return 0;
}

void shim_detach_at_finalize(void) {
  if (shim_g.verbose)
    shim_log("finalize: %zu requests tracked, pending sends %u recvs %u colls %u, %d drained "
             "messages never received",
             shim_req_count(), shim_g.slot->pending_sends, shim_g.slot->pending_recvs,
             shim_g.slot->pending_colls, shim_drained_count);
  if (!shim_g.attached) return;
  set_state(SYMBIO_ST_FINALIZED);
  shim_g.cmdp = &local_run;
  shim_g.run_word = local_run;
  if (shim_g.agent_pidfd >= 0) close(shim_g.agent_pidfd);
  shim_g.agent_pidfd = -1;
  /* keep the mapping: counters stay readable until the process exits */
}

/* ---- holding ----------------------------------------------------------- */

static int agent_alive(void) {
  if (shim_g.agent_pidfd >= 0) {
    struct pollfd pfd = {.fd = shim_g.agent_pidfd, .events = POLLIN};
    return poll(&pfd, 1, 0) == 0; /* readable = exited */
  }
  if (shim_g.agent_pid > 0) return !(kill(shim_g.agent_pid, 0) != 0 && errno == ESRCH);
  return 1;
}

static void resume_by_myself(uint32_t epoch, int reason) {
  shim_g.ignore_epoch = epoch;
  shim_g.have_ignore = 1;
  SHIM_SLOT_SET(autoresume_reason, (uint32_t)reason);
  SHIM_SLOT_SET(flags, shim_g.slot->flags | SYMBIO_F_AUTORESUMED);
  SHIM_SLOT_ADD(autoresumes, 1);
  if (reason == SYMBIO_AR_AGENT_GONE) {
    shim_log("resuming by myself: the symbio agent (pid %d) is gone", shim_g.agent_pid);
    set_state(SYMBIO_ST_DETACHED);
    shim_g.cmdp = &local_run; /* never look at the segment again */
    shim_g.run_word = local_run;
  } else {
    shim_log("resuming by myself: no RESUME within %u ms", shim_g.hdr->resume_timeout_ms);
    set_state(SYMBIO_ST_RUNNING);
  }
}

/* Behind on a collective the agent asked us to catch up on? */
static int behind_on_catchup(uint32_t epoch) {
  symbio_slot_fixed *s = shim_g.slot;
  uint32_t n = __atomic_load_n(&s->catchup_count, __ATOMIC_ACQUIRE);
  if (n == 0 || __atomic_load_n(&s->catchup_epoch, __ATOMIC_ACQUIRE) != epoch) return 0;
  if (n > SYMBIO_MAX_COMMS) n = SYMBIO_MAX_COMMS; /* validate agent input */
  uint32_t nc = shim_g.ncomms;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t gid = s->catchup[i].gid, target = s->catchup[i].seq;
    for (uint32_t j = 0; j < nc; j++)
      if (s->comms[j].gid == gid && s->comms[j].seq < target) return 1;
  }
  return 0;
}

static void sleep_on_cmd(uint32_t seen, uint64_t ns) {
  struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
  futex((uint32_t *)shim_g.cmdp, FUTEX_WAIT, seen, &ts);
}

static unsigned idle_spins;

int shim_hold_step(void) {
  uint32_t w = __atomic_load_n(shim_g.cmdp, __ATOMIC_ACQUIRE);
  uint32_t cmd = SYMBIO_CMD_OF(w), epoch = SYMBIO_CMD_EPOCH(w);
  if (shim_g.unsupported || !shim_g.attached) {
    shim_g.run_word = w; /* never hold a job we cannot quiesce */
    return HS_PROCEED;
  }
  if (cmd == SYMBIO_CMD_RUN || (shim_g.have_ignore && epoch == shim_g.ignore_epoch)) {
    if (shim_g.slot->state != SYMBIO_ST_RUNNING) {
      if (cmd == SYMBIO_CMD_RUN) SHIM_SLOT_SET(ack_epoch, epoch);
      set_state(SYMBIO_ST_RUNNING);
    }
    shim_g.run_word = w; /* the fast path may skip us until the word changes */
    return HS_PROCEED;
  }
  uint64_t now = shim_now_ns();
  if (shim_g.held_epoch != epoch || shim_g.held_since_ns == 0) {
    shim_g.held_epoch = epoch;
    shim_g.held_since_ns = now;
  }
  if (now - shim_g.last_live_check_ns > LIVE_CHECK_EVERY_NS) {
    shim_g.last_live_check_ns = now;
    if (!agent_alive()) {
      resume_by_myself(epoch, SYMBIO_AR_AGENT_GONE);
      return HS_PROCEED;
    }
  }
  uint32_t st = shim_g.slot->state;
  if (st != SYMBIO_ST_FROZEN && behind_on_catchup(epoch)) {
    /* run on until we enter the collective the others are waiting in */
    SHIM_SLOT_SET(ack_epoch, epoch);
    set_state(SYMBIO_ST_CATCHUP);
    shim_g.held_since_ns = 0;
    return HS_PROCEED;
  }
  uint64_t limit = (uint64_t)shim_g.hdr->resume_timeout_ms * 1000000ull;
  if (now - shim_g.held_since_ns > limit) {
    resume_by_myself(epoch, SYMBIO_AR_TIMEOUT);
    return HS_PROCEED;
  }
  if (cmd == SYMBIO_CMD_FREEZE && (st == SYMBIO_ST_HELD || st == SYMBIO_ST_FROZEN)) {
    if (st != SYMBIO_ST_FROZEN) set_state(SYMBIO_ST_FROZEN);
    /* frozen: no MPI at all; sleep until the command word changes */
    uint64_t left = limit - (now - shim_g.held_since_ns);
    sleep_on_cmd(w, left < FROZEN_SLEEP_NS ? left : FROZEN_SLEEP_NS);
    return HS_FROZEN;
  }
  /* HOLD (or FREEZE seen before we were held: hold first) */
  if (st != SYMBIO_ST_HELD) {
    SHIM_SLOT_SET(ack_epoch, epoch);
    set_state(SYMBIO_ST_HELD);
    idle_spins = 0;
  }
  SHIM_SLOT_ADD(pmpi_calls, 1);
  /* drain and poll open the seqlock bracket themselves, only when they are
     about to change something: an idle held rank never looks busy */
  int moved = shim_drain_all();
  moved |= shim_req_poll_all();
  /* counters moved by a call that completed while we were held */
  moved |= shim_g.tally != shim_g.tally_published;
  if (moved) {
    idle_spins = 0;
    shim_changed();
  } else if (++idle_spins > HELD_IDLE_SPINS) {
    sleep_on_cmd(w, HELD_SLEEP_NS);
  }
  return HS_HELD;
}

void shim_safe_point_slow(void) {
  while (shim_hold_step() != HS_PROCEED) {
  }
}
