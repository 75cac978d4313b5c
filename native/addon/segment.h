// Segment: the agent's side of one control segment (POSIX shm object) — create,
// map, publish commands and catch-up tables, unlink. No Node-API here; the JS
// binding (ControlSegment) wraps it, the Watcher and SnapshotReader read it.
//
// The geometry (slot count, world size, slot size, mapped length) is kept in
// this object and never re-read from shared memory: every rank can write the
// whole mapping, so a buggy rank must not be able to make the agent index out
// of bounds by scribbling over the header. The same goes for the command word:
// the authoritative epoch/command live here and are only published to memory.
#ifndef SYMBIO_ADDON_SEGMENT_H
#define SYMBIO_ADDON_SEGMENT_H

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "symbio_segment.h"

namespace symbio {

struct SegmentConfig {
  std::string name;  // "/symbio-<job>-<pid>"
  uint32_t slots = 0;
  uint32_t world_size = 0;
  uint32_t resume_timeout_ms = 0;
  std::string job_id;  // truncated to SYMBIO_JOB_ID_BYTES - 1 at a UTF-8 boundary
};

// What inspect() reports about an existing segment (read without mapping it).
struct HeaderInfo {
  std::string name;
  uint32_t abi_version = 0;
  uint32_t slot_count = 0;
  uint32_t world_size = 0;
  int32_t agent_pid = 0;
  uint32_t resume_timeout_ms = 0;
  std::string job_id;
  uint32_t epoch = 0;
  uint32_t command = 0;  // SYMBIO_CMD_RUN / HOLD / FREEZE
  uint64_t segment_bytes = 0;
  uint64_t created_ns = 0;  // CLOCK_REALTIME
};

// Epochs live in the upper 30 bits of the command word.
constexpr uint32_t kEpochMask = 0x3fffffffu;

class Segment {
 public:
  // Creates the shm object (O_EXCL, mode 0600), sizes, reserves and maps it and
  // writes the header. Throws SegmentError with a one-line message.
  static std::unique_ptr<Segment> Create(const SegmentConfig& config);

  // Reads and validates the header of an existing segment (any creator).
  static HeaderInfo Inspect(const std::string& name);

  // Throws SegmentError unless `name` is a usable POSIX shm name ("/x").
  static void ValidateName(const std::string& name);

  // "run" / "hold" / "freeze" for a SYMBIO_CMD_* value ("unknown" otherwise).
  static const char* CommandName(uint32_t command);

  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const std::string& name() const { return name_; }
  bool is_open() const { return base_ != nullptr; }
  uint32_t slot_count() const { return slot_count_; }
  uint32_t world_size() const { return world_size_; }
  uint32_t epoch() const { return epoch_; }
  uint32_t command() const { return command_; }

  // Valid only while is_open(); `i` must be < slot_count().
  symbio_seg_header* header() const { return static_cast<symbio_seg_header*>(base_); }
  symbio_slot_fixed* slot(uint32_t i) const;

  // Commands; each returns the epoch it published. hold() starts a new epoch.
  uint32_t Hold();
  /** Hold at an explicit epoch (must be after the current one). */
  uint32_t Hold(uint32_t epoch);
  uint32_t Freeze();
  uint32_t Resume();

  // Publishes slot `slot`'s catch-up table for `epoch` and wakes the ranks.
  void SetCatchup(uint32_t slot, uint32_t epoch, const symbio_comm_pub* entries, uint32_t count);

  // Throws if the shm object shrank below what is mapped (touching the lost
  // pages would raise SIGBUS). Only another process of the same user can do
  // that; checked before each full read of the slots.
  void CheckIntact() const;
  bool Intact() const noexcept;

  // Idempotent. Releases held/frozen ranks (publishes RUN: an agent that goes
  // away must not leave ranks waiting for their own timeout), unmaps, closes
  // and unlinks the name if it still names this object.
  void Close() noexcept;

 private:
  Segment() = default;
  uint32_t Publish(uint32_t command);
  void RequireOpen(const char* what) const;

  std::string name_;
  int fd_ = -1;
  void* base_ = nullptr;
  uint64_t mapped_bytes_ = 0;
  uint64_t slot_bytes_ = 0;
  uint32_t slot_count_ = 0;
  uint32_t world_size_ = 0;
  uint32_t epoch_ = 0;
  uint32_t command_ = SYMBIO_CMD_RUN;
  dev_t dev_ = 0;  // identity of our shm object, so Close() never unlinks
  ino_t ino_ = 0;  // a newer object that reuses the name
};

}  // namespace symbio

#endif
