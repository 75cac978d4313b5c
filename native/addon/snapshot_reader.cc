// SnapshotReader: double collect over all slots, then validation. See .h.
#include "snapshot_reader.h"

#include <cstring>

#include "shared_memory.h"

namespace symbio {

namespace {

static_assert(sizeof(symbio_slot_fixed) % sizeof(uint64_t) == 0, "slot copied in 8-byte words");

// Copies a slot's fixed part with one relaxed 8-byte load per word. The slot
// starts on a 64-byte boundary and every uint64 field is 8-aligned, so each
// field is read whole (no torn counters); pairs of uint32 fields share a word.
void CopyFixed(const symbio_slot_fixed* src, symbio_slot_fixed* dst) {
  constexpr size_t kWords = sizeof(symbio_slot_fixed) / sizeof(uint64_t);
  const AliasedU64* from = reinterpret_cast<const AliasedU64*>(src);
  uint64_t words[kWords];
  for (size_t i = 0; i < kWords; i++) words[i] = LoadRelaxed(&from[i]);
  std::memcpy(dst, words, sizeof words);
}

std::string SlotPrefix(uint32_t slot) { return "slot " + std::to_string(slot) + ": "; }

}  // namespace

const char* SnapshotReader::StateName(uint32_t state) {
  switch (state) {
    case SYMBIO_ST_EMPTY: return "empty";
    case SYMBIO_ST_RUNNING: return "running";
    case SYMBIO_ST_HELD: return "held";
    case SYMBIO_ST_CATCHUP: return "catchup";
    case SYMBIO_ST_FROZEN: return "frozen";
    case SYMBIO_ST_FINALIZED: return "finalized";
    case SYMBIO_ST_DETACHED: return "detached";
    default: return nullptr;
  }
}

const char* SnapshotReader::UnsupportedName(uint32_t reason) {
  switch (reason) {
    case SYMBIO_UNSUP_RMA: return "rma";
    case SYMBIO_UNSUP_IO: return "io";
    case SYMBIO_UNSUP_DYNAMIC: return "dynamic-processes";
    case SYMBIO_UNSUP_THREAD_MULTIPLE: return "thread-multiple";
    case SYMBIO_UNSUP_TOO_MANY_REQUESTS: return "too-many-requests";
    case SYMBIO_UNSUP_TOO_MANY_COMMS: return "too-many-communicators";
    case SYMBIO_UNSUP_WORLD_TOO_LARGE: return "world-too-large";
    case SYMBIO_UNSUP_COMM_IDUP: return "comm-idup";
    default: return nullptr;
  }
}

const char* SnapshotReader::AutoresumeName(uint32_t reason) {
  switch (reason) {
    case SYMBIO_AR_AGENT_GONE: return "agent-gone";
    case SYMBIO_AR_TIMEOUT: return "timeout";
    default: return nullptr;
  }
}

RawSnapshot SnapshotReader::Take(const Segment& segment) {
  segment.CheckIntact();
  const uint32_t slots = segment.slot_count();
  const uint32_t world = segment.world_size();

  RawSnapshot snap;
  snap.epoch = segment.epoch();
  snap.command = segment.command();
  snap.world_size = world;

  // Collect 1: every slot's change_seq, with acquire so that the copy below
  // sees at least what the rank had written when it bumped the counter.
  std::vector<uint32_t> seq_before(slots);
  for (uint32_t i = 0; i < slots; i++) seq_before[i] = LoadAcquire(&segment.slot(i)->change_seq);

  snap.taken_ns = ClockNs(CLOCK_MONOTONIC);
  std::vector<symbio_slot_fixed> copies(slots);
  std::vector<size_t> counter_at(slots, SIZE_MAX);
  for (uint32_t i = 0; i < slots; i++) {
    symbio_slot_fixed* s = segment.slot(i);
    CopyFixed(s, &copies[i]);
    if (copies[i].state == SYMBIO_ST_EMPTY) continue;
    // Counters are read for every claimed slot, whatever its other fields
    // say, and always world entries long: the segment's geometry decides the
    // bounds, never a value a rank wrote.
    counter_at[i] = snap.counters.size();
    const uint64_t* sent = symbio_slot_sent(s);
    const uint64_t* recvd = symbio_slot_recvd(s, world);
    for (uint32_t q = 0; q < world; q++) snap.counters.push_back(static_cast<double>(LoadRelaxed(&sent[q])));
    for (uint32_t p = 0; p < world; p++) snap.counters.push_back(static_cast<double>(LoadRelaxed(&recvd[p])));
  }

  // Collect 2: the acquire fence orders the copy's loads before these, so an
  // unchanged change_seq means no slow-path update landed during the copy.
  FenceAcquire();
  for (uint32_t i = 0; i < slots; i++) {
    // odd: the rank was in the middle of a slow-path update (seqlock)
    if (LoadRelaxed(&segment.slot(i)->change_seq) != seq_before[i] || (seq_before[i] & 1u)) snap.consistent = false;
  }

  // Validation of everything a rank wrote: a buggy rank must show up as a
  // problem (which also makes the cut inconsistent, so nobody declares a
  // quiescence on it), never as a crash or a plausible-looking value.
  for (uint32_t i = 0; i < slots; i++) {
    const symbio_slot_fixed& f = copies[i];
    if (f.state == SYMBIO_ST_EMPTY) continue;
    const std::string where = SlotPrefix(i);
    const size_t problems_before = snap.problems.size();
    const char* state = StateName(f.state);
    if (state == nullptr) {
      snap.problems.push_back(where + "state " + std::to_string(f.state) + " out of range (treated as empty)");
      snap.consistent = false;
      continue;
    }
    RankCopy r;
    r.slot = i;
    r.change_seq = seq_before[i];
    r.fixed = f;
    r.state = state;
    r.counters = counter_at[i];
    if (f.pid <= 0) snap.problems.push_back(where + "pid " + std::to_string(f.pid) + " is not a process id");
    if (f.world_rank < 0 || static_cast<uint32_t>(f.world_rank) >= world) {
      snap.problems.push_back(where + "world rank " + std::to_string(f.world_rank) + " outside 0.." +
                              std::to_string(world - 1));
    }
    // A rank in a larger world than the segment counts refuses quiescing
    // (world-too-large) rather than overflowing its arrays; anything else is
    // a mismatch between launcher and agent.
    if ((f.world_size <= 0 || f.world_size > static_cast<int32_t>(world)) && f.unsupported != SYMBIO_UNSUP_WORLD_TOO_LARGE) {
      snap.problems.push_back(where + "world size " + std::to_string(f.world_size) + " is outside 1..the segment's " +
                              std::to_string(world));
    }
    r.ncomms = f.ncomms;
    if (f.ncomms > SYMBIO_MAX_COMMS) {
      snap.problems.push_back(where + "ncomms " + std::to_string(f.ncomms) + " exceeds " +
                              std::to_string(SYMBIO_MAX_COMMS) + " (clamped)");
      r.ncomms = SYMBIO_MAX_COMMS;
    }
    if (f.unsupported != SYMBIO_UNSUP_NONE) {
      r.unsupported = UnsupportedName(f.unsupported);
      if (r.unsupported == nullptr) {
        snap.problems.push_back(where + "unsupported reason " + std::to_string(f.unsupported) + " unknown");
        r.unsupported = "unknown";
      }
    } else if (f.flags & SYMBIO_F_UNSUPPORTED) {
      r.unsupported = "unspecified";  // flagged without a reason: still refuses
    }
    if (f.autoresume_reason != SYMBIO_AR_NONE) {
      r.autoresume_reason = AutoresumeName(f.autoresume_reason);
      if (r.autoresume_reason == nullptr) {
        snap.problems.push_back(where + "autoresume reason " + std::to_string(f.autoresume_reason) + " unknown");
      }
    }
    if (snap.problems.size() != problems_before) snap.consistent = false;
    snap.ranks.push_back(r);
  }
  return snap;
}

}  // namespace symbio
