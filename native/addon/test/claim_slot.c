/*
 * claim_slot: a stand-in for the PMPI shim's attach, for the addon's tests.
 *
 *   SYMBIO_SEGMENT=/name claim_slot SLOT WORLD_RANK [STATE [BUMPS]]
 *
 * Opens the control segment named by SYMBIO_SEGMENT the way a rank does,
 * validates its header, claims slot SLOT (pid = its own pid, world_rank,
 * world_size = the segment's, state = STATE, default 1 = RUNNING, published
 * last with release ordering), bumps change_seq, then bumps header.agent_wake
 * and FUTEX_WAKEs it, as the shim does after any slow-path change. BUMPS > 0
 * repeats the agent_wake bump that many more times (for the coalescing test).
 * Prints "claimed <slot> <pid>" and sleeps until killed, so the test can make
 * the "rank" exit whenever it wants.
 *
 * It is not the shim and must not grow into one: it exists so the addon's
 * pidfd / futex paths can be tested with a real second process before the
 * shim lands (tests may not fake a rank by writing a slot from JS).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "symbio_segment.h"

static int die(const char *what) {
  fprintf(stderr, "claim_slot: %s\n", what);
  return 2;
}

static void wake_agent(symbio_seg_header *h) {
  __atomic_fetch_add(&h->agent_wake, 1u, __ATOMIC_RELEASE);
  syscall(SYS_futex, &h->agent_wake, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

int main(int argc, char **argv) {
  if (argc < 3 || argc > 5) return die("usage: SYMBIO_SEGMENT=/name claim_slot SLOT WORLD_RANK [STATE [BUMPS]]");
  const char *name = getenv("SYMBIO_SEGMENT");
  if (name == NULL || name[0] != '/') return die("SYMBIO_SEGMENT must name the control segment (\"/...\")");
  const unsigned long slot = strtoul(argv[1], NULL, 10);
  const long world_rank = strtol(argv[2], NULL, 10);
  const unsigned long state = argc > 3 ? strtoul(argv[3], NULL, 10) : SYMBIO_ST_RUNNING;
  const unsigned long bumps = argc > 4 ? strtoul(argv[4], NULL, 10) : 0;

  int fd = shm_open(name, O_RDWR, 0);
  if (fd < 0) return die(strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) return die(strerror(errno));
  if ((uint64_t)st.st_size < SYMBIO_HEADER_BYTES) return die("segment smaller than its header");
  void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return die(strerror(errno));
  close(fd);
  symbio_seg_header *h = base;
  if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != SYMBIO_SEG_MAGIC) return die("bad magic");
  const char *problem = symbio_header_problem(h, (uint64_t)st.st_size);
  if (problem != NULL) return die(problem);
  if (slot >= h->slot_count) return die("slot out of range");

  symbio_slot_fixed *s = symbio_slot_at(h, (uint32_t)slot);
  __atomic_store_n(&s->pid, (int32_t)getpid(), __ATOMIC_RELAXED);
  __atomic_store_n(&s->world_rank, (int32_t)world_rank, __ATOMIC_RELAXED);
  __atomic_store_n(&s->world_size, (int32_t)h->world_size, __ATOMIC_RELAXED);
  __atomic_store_n(&s->state, (uint32_t)state, __ATOMIC_RELEASE);
  __atomic_fetch_add(&s->change_seq, 2u, __ATOMIC_RELEASE); /* even: seqlock, like the shim */
  wake_agent(h);
  for (unsigned long i = 0; i < bumps; i++) wake_agent(h);

  printf("claimed %lu %d\n", slot, (int)getpid());
  fflush(stdout);
  for (;;) pause();
}
