/*
 * shim_harness: a minimal agent in C for the shim's own tests (ctest), so the
 * shim can be exercised under AddressSanitizer without Node. It creates a
 * control segment, runs `mpirun ... program` with the shim preloaded, and
 * drives quiesce cycles: HOLD, wait for quiescence (all held, counters
 * balanced, collective counts agreed — with catch-up), FREEZE, check that no
 * rank makes MPI progress for a while, RESUME.
 *
 *   shim_harness [-c cycles] [-i interval_ms] [-t resume_timeout_ms]
 *                [-k kill_agent_after_freezes] [-m min_completed]
 *                [-w ranks_to_wait_for] -- mpirun args...
 *
 * Exit status: the job's, or 99 when a quiescence check failed. The job's
 * stdout passes through; the harness reports on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "symbio_segment.h"

static symbio_seg_header *H;
static char shm_name[64];

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void set_cmd(uint32_t epoch, uint32_t cmd) {
  __atomic_store_n(&H->cmd, SYMBIO_CMD_WORD(epoch, cmd), __ATOMIC_RELEASE);
  syscall(SYS_futex, &H->cmd, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

static void cleanup(void) { shm_unlink(shm_name); }

/* One pass over the slots: 1 = quiescent, 0 = not yet, -1 = job refuses.
 * Writes catch-up targets for ranks behind on a communicator. */
static int check(uint32_t epoch, int want_state, char *why, size_t whylen) {
  uint32_t n = H->slot_count, W = H->world_size;
  uint32_t seq0[SYMBIO_MAX_SLOTS];
  for (uint32_t i = 0; i < n; i++)
    seq0[i] = __atomic_load_n(&symbio_slot_at(H, i)->change_seq, __ATOMIC_ACQUIRE);
  int live = 0, ok = 1;
  for (uint32_t i = 0; i < n && ok; i++) {
    symbio_slot_fixed *s = symbio_slot_at(H, i);
    uint32_t st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
    if (st == SYMBIO_ST_EMPTY || st == SYMBIO_ST_FINALIZED) continue;
    live++;
    if (s->flags & SYMBIO_F_UNSUPPORTED) return snprintf(why, whylen, "slot %u unsupported", i), -1;
    if (st == SYMBIO_ST_DETACHED) return snprintf(why, whylen, "slot %u detached", i), -1;
    if ((int)st != want_state || s->ack_epoch != epoch)
      ok = 0, snprintf(why, whylen, "slot %u state %u", i, st);
    else if (s->pending_sends || s->pending_colls || (s->flags & SYMBIO_F_IN_COLL))
      ok = 0, snprintf(why, whylen, "slot %u pending s%u c%u", i, s->pending_sends, s->pending_colls);
  }
  /* collective counts: max per gid, catch-up for those behind */
  for (uint32_t i = 0; i < n; i++) {
    symbio_slot_fixed *s = symbio_slot_at(H, i);
    if (s->state == SYMBIO_ST_EMPTY) continue;
    symbio_comm_pub targets[SYMBIO_MAX_COMMS];
    uint32_t nt = 0, nc = s->ncomms > SYMBIO_MAX_COMMS ? SYMBIO_MAX_COMMS : s->ncomms;
    for (uint32_t c = 0; c < nc; c++) {
      uint64_t gid = s->comms[c].gid, mx = s->comms[c].seq;
      for (uint32_t j = 0; j < n; j++) {
        symbio_slot_fixed *o = symbio_slot_at(H, j);
        if (o->state == SYMBIO_ST_EMPTY) continue;
        uint32_t onc = o->ncomms > SYMBIO_MAX_COMMS ? SYMBIO_MAX_COMMS : o->ncomms;
        for (uint32_t k = 0; k < onc; k++)
          if (o->comms[k].gid == gid && o->comms[k].seq > mx) mx = o->comms[k].seq;
      }
      if (mx > s->comms[c].seq) targets[nt].gid = gid, targets[nt++].seq = mx;
    }
    if (nt) {
      ok = 0;
      snprintf(why, whylen, "slot %u behind on %u communicator(s)", i, nt);
      if (want_state == SYMBIO_ST_HELD) {
        memcpy(s->catchup, targets, nt * sizeof targets[0]);
        __atomic_store_n(&s->catchup_epoch, epoch, __ATOMIC_RELEASE);
        __atomic_store_n(&s->catchup_count, nt, __ATOMIC_RELEASE);
        syscall(SYS_futex, &H->cmd, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
      }
    }
  }
  if (!ok || live == 0) return live == 0 ? (snprintf(why, whylen, "no live ranks"), 0) : 0;
  /* balance: sent[p->q] == recvd[q<-p] over world ranks */
  for (uint32_t i = 0; i < n; i++) {
    symbio_slot_fixed *p = symbio_slot_at(H, i);
    if (p->state == SYMBIO_ST_EMPTY) continue;
    for (uint32_t j = 0; j < n; j++) {
      symbio_slot_fixed *q = symbio_slot_at(H, j);
      if (q->state == SYMBIO_ST_EMPTY) continue;
      uint32_t pr = (uint32_t)p->world_rank, qr = (uint32_t)q->world_rank;
      if (pr >= W || qr >= W) return snprintf(why, whylen, "bad world rank"), -1;
      uint64_t s = symbio_slot_sent(p)[qr], r = symbio_slot_recvd(q, W)[pr];
      if (s != r) {
        snprintf(why, whylen, "%u->%u sent %llu recvd %llu", pr, qr, (unsigned long long)s,
                 (unsigned long long)r);
        return 0;
      }
    }
  }
  for (uint32_t i = 0; i < n; i++)
    if (__atomic_load_n(&symbio_slot_at(H, i)->change_seq, __ATOMIC_ACQUIRE) != seq0[i])
      return snprintf(why, whylen, "changed while reading"), 0;
  return 1;
}

static uint64_t progress_sum(void) {
  uint64_t t = 0;
  for (uint32_t i = 0; i < H->slot_count; i++) {
    symbio_slot_fixed *s = symbio_slot_at(H, i);
    t += s->pmpi_calls;
    for (uint32_t q = 0; q < H->world_size; q++) t += symbio_slot_sent(s)[q] + symbio_slot_recvd(s, H->world_size)[q];
  }
  return t;
}

int main(int argc, char **argv) {
  int cycles = 50, interval = 20, kill_after = -1, timeout_ms = 10000, slots = 16, min_done = 0, wait_ranks = 0;
  int opt;
  while ((opt = getopt(argc, argv, "+c:i:t:k:n:m:w:")) != -1) {
    if (opt == 'c') cycles = atoi(optarg);
    else if (opt == 'i') interval = atoi(optarg);
    else if (opt == 't') timeout_ms = atoi(optarg);
    else if (opt == 'k') kill_after = atoi(optarg);
    else if (opt == 'n') slots = atoi(optarg);
    else if (opt == 'm') min_done = atoi(optarg);
    else if (opt == 'w') wait_ranks = atoi(optarg);
    else return fprintf(stderr, "usage: shim_harness [-c N] [-i ms] [-t ms] [-k N] [-n slots] [-m min_completed] [-w ranks] -- mpirun ...\n"), 2;
  }
  if (optind >= argc) return fprintf(stderr, "shim_harness: no command\n"), 2;
  snprintf(shm_name, sizeof shm_name, "/symbio-harness-%d", (int)getpid());
  uint32_t world = 64;
  uint64_t bytes = symbio_segment_bytes((uint32_t)slots, world);
  int fd = shm_open(shm_name, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) return perror("shm"), 2;
  H = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (H == MAP_FAILED) return perror("mmap"), 2;
  atexit(cleanup);
  memset(H, 0, bytes);
  H->abi_version = SYMBIO_ABI_VERSION;
  H->header_bytes = SYMBIO_HEADER_BYTES;
  H->segment_bytes = bytes;
  H->slot_count = (uint32_t)slots;
  H->world_size = world;
  H->slot_bytes = (uint32_t)symbio_slot_bytes(world);
  H->max_comms = SYMBIO_MAX_COMMS;
  H->agent_pid = getpid();
  H->resume_timeout_ms = (uint32_t)timeout_ms;
  strcpy(H->job_id, "harness");
  __atomic_store_n(&H->magic, SYMBIO_SEG_MAGIC, __ATOMIC_RELEASE);

  setenv("SYMBIO_SEGMENT", shm_name, 1);
  pid_t child = fork();
  if (child == 0) {
    execvp(argv[optind], argv + optind);
    perror("exec");
    _exit(127);
  }
  int status = 0;
  srand((unsigned)getpid());
  /* cycles start once the ranks are there (mpirun takes a moment) */
  for (int attached = 0; attached < wait_ranks;) {
    if (waitpid(child, &status, WNOHANG) == child) {
      fprintf(stderr, "harness: job ended before %d ranks attached\n", wait_ranks);
      return 98;
    }
    sleep_ms(5);
    attached = 0;
    for (uint32_t i = 0; i < H->slot_count; i++)
      if (__atomic_load_n(&symbio_slot_at(H, i)->state, __ATOMIC_ACQUIRE) != SYMBIO_ST_EMPTY) attached++;
  }
  int done = 0, aborted = 0, freezes = 0, bad = 0;
  uint32_t epoch = 0;
  for (;;) {
    sleep_ms((unsigned)(interval / 2 + rand() % (interval + 1)));
    if (waitpid(child, &status, WNOHANG) == child) break;
    if (done + aborted >= cycles) continue;
    set_cmd(++epoch, SYMBIO_CMD_HOLD);
    uint64_t t0 = now_ms();
    char why[160] = "";
    int r = 0;
    while ((r = check(epoch, SYMBIO_ST_HELD, why, sizeof why)) == 0 && now_ms() - t0 < 2000)
      sleep_ms(1);
    if (r != 1) {
      aborted++;
      set_cmd(epoch, SYMBIO_CMD_RUN);
      fprintf(stderr, "harness: cycle %u aborted: %s\n", epoch, why);
      continue;
    }
    set_cmd(epoch, SYMBIO_CMD_FREEZE);
    t0 = now_ms();
    while ((r = check(epoch, SYMBIO_ST_FROZEN, why, sizeof why)) == 0 && now_ms() - t0 < 2000)
      sleep_ms(1);
    uint64_t p0 = progress_sum();
    sleep_ms(5);
    if (r != 1 || progress_sum() != p0) {
      bad++;
      fprintf(stderr, "harness: cycle %u: not frozen: %s\n", epoch, r == 1 ? "progress while frozen" : why);
    }
    freezes++;
    if (kill_after >= 0 && freezes > kill_after) {
      /* the agent dies with ranks frozen: they must resume by themselves */
      fprintf(stderr, "harness: leaving ranks frozen and exiting (agent death)\n");
      fflush(stderr);
      shm_unlink(shm_name);
      _exit(0);
    }
    set_cmd(epoch, SYMBIO_CMD_RUN);
    done++;
  }
  unsigned long long drained = 0;
  for (uint32_t i = 0; i < H->slot_count; i++) drained += symbio_slot_at(H, i)->drained_total;
  fprintf(stderr, "harness: %d cycles completed, %d aborted, %d bad, %llu messages drained\n", done,
          aborted, bad, drained);
  if (bad) return 99;
  if (done < min_done) return fprintf(stderr, "harness: fewer than %d cycles completed\n", min_done), 98;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
