// Watcher: turns what happens in a control segment into events, without any
// timed polling.
//
// Two threads:
//  - the bridge sleeps in FUTEX_WAIT on header.agent_wake (ranks bump it and
//    FUTEX_WAKE it whenever their slow path changes something) and writes to
//    an eventfd, because a futex cannot be put into an epoll set;
//  - the watcher epolls that eventfd and one pidfd per attached rank. On a
//    wake it scans the slots for newly attached ranks (and opens their
//    pidfds) and reports 'changed'; a readable pidfd means the rank exited.
// Events go to a Sink supplied by the binding (a thread-safe function).
//
// The Segment must stay mapped until Stop() has returned (the binding stops
// the watcher before it closes the segment); the shared_ptr only keeps the
// object itself alive for a watcher that outlives its binding.
#ifndef SYMBIO_ADDON_WATCHER_H
#define SYMBIO_ADDON_WATCHER_H

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "segment.h"

namespace symbio {

struct WatchEvent {
  enum class Kind { kChanged, kRankAttached, kRankExit, kError };
  Kind kind = Kind::kChanged;
  uint32_t slot = 0;
  int32_t pid = 0;
  int32_t world_rank = 0;
  std::string message;  // kError only
};

class Watcher {
 public:
  // Called on the watcher thread. Returns false once delivery is closed (the
  // consumer went away); the watcher then stops producing events.
  using Sink = std::function<bool(std::unique_ptr<WatchEvent>)>;

  explicit Watcher(std::shared_ptr<const Segment> segment) : segment_(std::move(segment)) {}
  ~Watcher() { Stop(); }
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  // Creates the eventfd and epoll set and starts both threads. Throws
  // SegmentError (nothing left running) on failure. Call at most once.
  void Start(Sink sink);

  // Idempotent; joins both threads and closes every fd. Safe from any thread
  // other than the two it joins.
  void Stop() noexcept;

  // 'changed' coalescing: at most one is queued for JS at any time. The
  // consumer calls this when it delivers one, before running JS code, so a
  // change made while JS handles the event produces a new one.
  void ChangedDelivered() { changed_pending_.store(false, std::memory_order_release); }

 private:
  struct Tracked {
    uint32_t slot;
    int32_t pid;
    int32_t world_rank;
    int pidfd;    // -1 once the rank has exited (or could not be watched)
    bool exited;  // remembered so a dead rank left in its slot is not re-watched
  };

  void BridgeLoop(uint32_t seen);
  void WatchLoop();
  void ScanSlots();
  void RankExited(uint64_t key);
  bool Emit(std::unique_ptr<WatchEvent> event);
  void EmitChanged();
  void EmitError(const std::string& message);
  void CloseFds() noexcept;

  static uint64_t KeyOf(uint32_t slot, int32_t pid) {
    return (static_cast<uint64_t>(slot) << 32) | static_cast<uint32_t>(pid);
  }

  std::shared_ptr<const Segment> segment_;
  Sink sink_;
  int event_fd_ = -1;
  int epoll_fd_ = -1;
  std::thread bridge_;
  std::thread watcher_;
  bool started_ = false;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> sink_closed_{false};
  std::atomic<bool> changed_pending_{false};
  std::mutex bridge_error_mutex_;
  std::string bridge_error_;  // set by the bridge when its futex wait fails
  std::mutex stop_mutex_;     // serialises Stop() callers
  // Only touched by the watcher thread (and by Stop() after joining it).
  std::unordered_map<uint64_t, Tracked> tracked_;
};

}  // namespace symbio

#endif
