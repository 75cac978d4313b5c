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
 *                [-w ranks_to_wait_for] [-u reason [-e text]] -- mpirun args...
 *
 * -u reason   the job must refuse quiesce (reason: a SYMBIO_UNSUP_* name in
 *             lower case without the prefix, e.g. io, or its number): every
 *             slot the job claimed ends flagged unsupported with that reason
 *             and finalized, at least one cycle was aborted because of it, no
 *             cycle completed after that, no flagged rank held while HOLD
 *             stayed on 20 ms more in refused cycles, and the job exited 0.
 * -e text     the job's stderr (passed through) must hold `text` on exactly
 *             one line per refusing slot (with -u), or on some line.
 * -k N        after N+1 freezes the agent dies with the ranks frozen: the
 *             harness process forks the agent (which exits, unlinking the
 *             segment) and stays as a subreaper to collect the orphaned job:
 *             every claimed slot must have resumed by itself because the
 *             agent was gone, finalized, and the job must exit 0 within 30 s.
 *
 * Exit status: the job's, or 99 when a quiescence check failed, 98 when too
 * few cycles completed, 97 when an expected refusal (-u/-e) did not happen
 * as expected, 96 when the ranks did not resume as expected after the
 * agent's death (-k). The job's stdout passes through; the harness reports on
 * stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
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

/* -e: the job's stderr comes through this pipe; sleeping pumps it to our
 * stderr and counts the lines that hold expect_text. */
static int err_pipe = -1;
static const char *expect_text;
static int expect_lines;
static char line[4096];
static size_t line_len;

static void end_line(void) {
  line[line_len] = '\0';
  if (line_len && strstr(line, expect_text)) expect_lines++;
  line_len = 0;
}

static void pump(int timeout_ms) {
  struct pollfd p = {.fd = err_pipe, .events = POLLIN};
  if (poll(&p, 1, timeout_ms) <= 0) return;
  char b[4096];
  ssize_t n = read(err_pipe, b, sizeof b);
  if (n <= 0) {
    if (n < 0 && errno == EINTR) return;
    close(err_pipe);
    err_pipe = -1;
    return;
  }
  ssize_t w = write(2, b, (size_t)n);
  (void)w;
  for (ssize_t i = 0; i < n; i++) {
    if (b[i] == '\n') end_line();
    else {
      line[line_len++] = b[i];
      if (line_len == sizeof line - 1) end_line();
    }
  }
}

static void sleep_ms(unsigned ms) {
  uint64_t end = now_ms() + ms, now;
  while ((now = now_ms()) < end) {
    if (err_pipe >= 0) {
      pump((int)(end - now));
      continue;
    }
    uint64_t left = end - now;
    struct timespec ts = {(time_t)(left / 1000), (long)(left % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
}

static const char *const unsup_names[] = {"none", "rma", "io", "dynamic", "thread_multiple",
                                          "too_many_requests", "too_many_comms",
                                          "world_too_large", "comm_idup"};
#define N_UNSUP (int)(sizeof unsup_names / sizeof unsup_names[0])

static int parse_reason(const char *s) {
  for (int i = 1; i < N_UNSUP; i++)
    if (strcmp(s, unsup_names[i]) == 0) return i;
  char *end;
  long v = strtol(s, &end, 10);
  return *s && !*end && v > 0 && v < 256 ? (int)v : -1;
}

static const char *reason_name(uint32_t r) { return r < (uint32_t)N_UNSUP ? unsup_names[r] : "?"; }

/* -u: after the job: did it refuse quiesce exactly as expected? 0 if so. */
static int check_refusal(int reason, int refused_cycles, int done_after, int status) {
  int claimed = 0, refusing = 0, wrong = 0;
  for (uint32_t i = 0; i < H->slot_count; i++) {
    symbio_slot_fixed *s = symbio_slot_at(H, i);
    if (s->pid == 0) continue; /* never claimed */
    claimed++;
    uint32_t fl = s->flags, un = s->unsupported, st = s->state;
    if ((fl & SYMBIO_F_UNSUPPORTED) && un == (uint32_t)reason) refusing++;
    else
      wrong++, fprintf(stderr, "harness: slot %u (rank %d): flags 0x%x unsupported %u (%s), expected %d (%s)\n",
                       i, s->world_rank, fl, un, reason_name(un), reason, reason_name((uint32_t)reason));
    if (st != SYMBIO_ST_FINALIZED)
      wrong++, fprintf(stderr, "harness: slot %u (rank %d) ended in state %u, not finalized\n", i,
                       s->world_rank, st);
  }
  if (claimed == 0) wrong++, fprintf(stderr, "harness: no slot was ever claimed\n");
  if (refused_cycles == 0) wrong++, fprintf(stderr, "harness: no cycle was refused as unsupported\n");
  if (done_after)
    wrong++, fprintf(stderr, "harness: %d cycle(s) completed after the job refused quiesce\n", done_after);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    wrong++, fprintf(stderr, "harness: the job did not exit 0 (wait status 0x%x)\n", status);
  if (expect_text && expect_lines != refusing)
    wrong++, fprintf(stderr, "harness: %d stderr line(s) hold \"%s\", expected %d (one per refusing rank)\n",
                     expect_lines, expect_text, refusing);
  if (wrong) return 97;
  fprintf(stderr, "harness: refusal as expected: %d of %d slots refused with reason %d (%s), %d cycle(s) refused, "
          "%d message line(s)\n", refusing, claimed, reason, reason_name((uint32_t)reason), refused_cycles,
          expect_lines);
  return 0;
}

/* -k: shared between the harness process and the agent it forks */
typedef struct {
  pid_t job;          /* mpirun, child of the agent, then ours */
  int agent_died;     /* the agent exited on purpose with ranks frozen */
  uint64_t died_ms;
} death_watch;

#define AFTER_DEATH_LIMIT_MS 30000

/* The harness process while its agent child runs the cycles and dies. */
static int observe_agent_death(pid_t agent, death_watch *dw) {
  int st = 0;
  while (waitpid(agent, &st, 0) < 0 && errno == EINTR) {
  }
  if (!dw->agent_died) {
    fprintf(stderr, "harness: the agent never died (the job ended first?); agent status 0x%x\n", st);
    return 96;
  }
  /* the job is ours now (we are its subreaper) */
  int status = 0, ended = 0;
  while (!ended) {
    pid_t r = waitpid(dw->job, &status, WNOHANG);
    if (r == dw->job) ended = 1;
    else if (r < 0 && errno != EINTR) return perror("harness: waitpid job"), 96;
    else if (now_ms() - dw->died_ms > AFTER_DEATH_LIMIT_MS) {
      fprintf(stderr, "harness: the job did not finish within %d ms of the agent's death; killing it\n",
              AFTER_DEATH_LIMIT_MS);
      kill(dw->job, SIGTERM);
      sleep_ms(3000);
      kill(dw->job, SIGKILL);
      waitpid(dw->job, &status, 0);
      return 96;
    }
    else sleep_ms(10);
  }
  uint64_t took = now_ms() - dw->died_ms;
  int claimed = 0, wrong = 0;
  for (uint32_t i = 0; i < H->slot_count; i++) {
    symbio_slot_fixed *s = symbio_slot_at(H, i);
    if (s->pid == 0) continue;
    claimed++;
    if (!(s->flags & SYMBIO_F_AUTORESUMED) || s->autoresumes < 1 ||
        s->autoresume_reason != SYMBIO_AR_AGENT_GONE)
      wrong++, fprintf(stderr, "harness: slot %u (rank %d): flags 0x%x, %llu autoresume(s), reason %u; "
                       "expected a resume by itself because the agent was gone (%d)\n", i,
                       s->world_rank, s->flags, (unsigned long long)s->autoresumes,
                       s->autoresume_reason, SYMBIO_AR_AGENT_GONE);
    if (s->state != SYMBIO_ST_FINALIZED)
      wrong++, fprintf(stderr, "harness: slot %u (rank %d) ended in state %u, not finalized\n", i,
                       s->world_rank, s->state);
  }
  if (claimed == 0) wrong++, fprintf(stderr, "harness: no slot was ever claimed\n");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    wrong++, fprintf(stderr, "harness: the job did not exit 0 after the agent's death (wait status 0x%x)\n",
                     status);
  if (wrong) return 96;
  fprintf(stderr, "harness: after the agent's death all %d ranks resumed by themselves (agent gone) and the "
          "job exited 0 %llu ms later\n", claimed, (unsigned long long)took);
  return 0;
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
  int expect_reason = -1;
  int opt;
  while ((opt = getopt(argc, argv, "+c:i:t:k:n:m:w:u:e:")) != -1) {
    if (opt == 'c') cycles = atoi(optarg);
    else if (opt == 'i') interval = atoi(optarg);
    else if (opt == 't') timeout_ms = atoi(optarg);
    else if (opt == 'k') kill_after = atoi(optarg);
    else if (opt == 'n') slots = atoi(optarg);
    else if (opt == 'm') min_done = atoi(optarg);
    else if (opt == 'w') wait_ranks = atoi(optarg);
    else if (opt == 'u' && (expect_reason = parse_reason(optarg)) < 0)
      return fprintf(stderr, "shim_harness: bad refusal reason '%s'\n", optarg), 2;
    else if (opt == 'e') expect_text = optarg;
    else if (opt != 'u')
      return fprintf(stderr, "usage: shim_harness [-c N] [-i ms] [-t ms] [-k N] [-n slots] [-m min_completed] [-w ranks] [-u reason [-e text]] -- mpirun ...\n"), 2;
  }
  if (kill_after >= 0 && (expect_reason >= 0 || expect_text))
    return fprintf(stderr, "shim_harness: -k does not go with -u/-e\n"), 2;
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

  death_watch *dw = NULL;
  if (kill_after >= 0) {
    /* the agent must really die: it is a child of ours, and the job, its
       child, becomes ours when it does */
    dw = mmap(NULL, sizeof *dw, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (dw == MAP_FAILED) return perror("mmap"), 2;
    memset(dw, 0, sizeof *dw);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return perror("prctl"), 2;
    pid_t agent = fork();
    if (agent < 0) return perror("fork"), 2;
    if (agent > 0) return observe_agent_death(agent, dw);
    H->agent_pid = getpid();
  }

  setenv("SYMBIO_SEGMENT", shm_name, 1);
  int fds[2] = {-1, -1};
  if (expect_text && pipe2(fds, O_CLOEXEC) != 0) return perror("pipe"), 2;
  pid_t child = fork();
  if (child == 0) {
    if (expect_text) dup2(fds[1], 2);
    execvp(argv[optind], argv + optind);
    perror("exec");
    _exit(127);
  }
  if (dw) dw->job = child;
  if (expect_text) {
    close(fds[1]);
    err_pipe = fds[0];
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
  int done = 0, aborted = 0, freezes = 0, bad = 0, refused = 0, done_after_refusal = 0, held_refusing = 0;
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
      if (r < 0 && strstr(why, "unsupported")) {
        refused++;
        /* -u: a rank that refuses must not hold either, even with HOLD on */
        if (expect_reason >= 0) {
          sleep_ms(20);
          for (uint32_t i = 0; i < H->slot_count; i++) {
            symbio_slot_fixed *s = symbio_slot_at(H, i);
            uint32_t st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
            if ((s->flags & SYMBIO_F_UNSUPPORTED) && s->ack_epoch == epoch &&
                (st == SYMBIO_ST_HELD || st == SYMBIO_ST_FROZEN))
              held_refusing++, fprintf(stderr, "harness: cycle %u: slot %u holds although it refuses quiesce\n",
                                       epoch, i);
          }
        }
      }
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
      if (dw) dw->died_ms = now_ms(), dw->agent_died = 1;
      shm_unlink(shm_name);
      _exit(0);
    }
    set_cmd(epoch, SYMBIO_CMD_RUN);
    done++;
    if (refused) done_after_refusal++;
  }
  /* the rest of the job's stderr (ranks may outlive mpirun's exit by a hair) */
  for (uint64_t t0 = now_ms(); err_pipe >= 0 && now_ms() - t0 < 2000;) pump(100);
  if (expect_text) end_line();
  unsigned long long drained = 0;
  for (uint32_t i = 0; i < H->slot_count; i++) drained += symbio_slot_at(H, i)->drained_total;
  fprintf(stderr, "harness: %d cycles completed, %d aborted, %d bad, %llu messages drained\n", done,
          aborted, bad, drained);
  if (bad) return 99;
  if (done < min_done) return fprintf(stderr, "harness: fewer than %d cycles completed\n", min_done), 98;
  if (expect_reason >= 0) {
    int rc = check_refusal(expect_reason, refused, done_after_refusal, status);
    if (held_refusing) return fprintf(stderr, "harness: %d time(s) a refusing rank held\n", held_refusing), 97;
    return rc;
  }
  if (expect_text && expect_lines == 0)
    return fprintf(stderr, "harness: no stderr line holds \"%s\"\n", expect_text), 97;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
