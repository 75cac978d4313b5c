// SnapshotReader: copies every slot of a control segment with a double collect
// and validates what the ranks wrote. No Node-API; the binding converts the
// result to the NodeSnapshot shape of src/quiesce/snapshot.ts.
#ifndef SYMBIO_ADDON_SNAPSHOT_READER_H
#define SYMBIO_ADDON_SNAPSHOT_READER_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "segment.h"
#include "symbio_segment.h"

namespace symbio {

// One claimed slot, copied and checked. Only fields that passed validation are
// meant to be used as they are; see the comments for the ones that were fixed.
struct RankCopy {
  uint32_t slot = 0;
  uint32_t change_seq = 0;   // as read before the copy
  symbio_slot_fixed fixed;   // raw copy (state/ncomms/reasons: use the fields below)
  uint32_t ncomms = 0;       // fixed.ncomms clamped to SYMBIO_MAX_COMMS
  const char* state = "";    // "running", "held", ...; never "empty"
  const char* unsupported = nullptr;        // reason name, or nullptr
  const char* autoresume_reason = nullptr;  // "agent-gone" / "timeout", or nullptr
  size_t counters = 0;  // sent[] at RawSnapshot::counters[counters .. +world), recvd[] right after
};

struct RawSnapshot {
  uint32_t epoch = 0;
  uint32_t command = SYMBIO_CMD_RUN;
  bool consistent = true;  // double collect saw no change and no slot was invalid
  uint64_t taken_ns = 0;   // CLOCK_MONOTONIC
  uint32_t world_size = 0;
  std::vector<RankCopy> ranks;  // claimed slots only, by slot index
  std::vector<double> counters;  // u64 counters as doubles (exact below 2^53)
  std::vector<std::string> problems;  // "slot 3: state 99 out of range (treated as empty)"
};

class SnapshotReader {
 public:
  // Throws SegmentError if the segment is closed or was truncated.
  static RawSnapshot Take(const Segment& segment);

  // Names for the enums of symbio_segment.h (nullptr for values outside them).
  static const char* StateName(uint32_t state);
  static const char* UnsupportedName(uint32_t reason);
  static const char* AutoresumeName(uint32_t reason);
};

}  // namespace symbio

#endif
