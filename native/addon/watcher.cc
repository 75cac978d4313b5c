// Watcher: futex bridge + epoll over an eventfd and the ranks' pidfds. See .h.
#include "watcher.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <exception>

#include "shared_memory.h"
#include "sys_error.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434  // same number on every architecture (Linux 5.3+)
#endif

namespace symbio {

namespace {

// epoll tag of the eventfd; pidfds are tagged (slot << 32 | pid) and a slot
// index is < SYMBIO_MAX_SLOTS, so no pidfd can carry this tag.
constexpr uint64_t kWakeKey = UINT64_MAX;

void SignalEventFd(int fd) {
  const uint64_t one = 1;
  // Fails only with EAGAIN when the counter is saturated, i.e. the fd is
  // readable anyway.
  ssize_t r = write(fd, &one, sizeof one);
  (void)r;
}

}  // namespace

void Watcher::Start(Sink sink) {
  if (started_ || event_fd_ >= 0) throw SegmentError("control segment " + segment_->name() + " is already watched");
  if (!segment_->is_open()) throw SegmentError("cannot watch control segment " + segment_->name() + ": it is closed");
  sink_ = std::move(sink);
  const std::string what = "cannot watch control segment " + segment_->name();
  event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) {
    const int err = errno;  // before anything else can change it
    throw SysError(what + ": eventfd", err);
  }
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) {
    const int err = errno;
    CloseFds();
    throw SysError(what + ": epoll_create1", err);
  }
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeKey;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev) != 0) {
    const int err = errno;
    CloseFds();
    throw SysError(what + ": epoll_ctl", err);
  }

  // Read before either thread runs: every bump after this wakes the bridge,
  // and the watcher's first scan (after this) sees every rank that attached
  // before it, so no attach can fall between the two.
  const uint32_t seen = LoadAcquire(&segment_->header()->agent_wake);

  // Both threads block every signal, so that signals meant for the process
  // (SIGTERM, SIGINT, SIGCHLD...) are handled by Node's main thread, not by
  // ours; the mask is inherited at creation and restored right after.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    bridge_ = std::thread(&Watcher::BridgeLoop, this, seen);
    try {
      watcher_ = std::thread(&Watcher::WatchLoop, this);
    } catch (...) {
      stopping_.store(true);
      __atomic_fetch_add(&segment_->header()->agent_wake, 1u, __ATOMIC_SEQ_CST);
      FutexWake(&segment_->header()->agent_wake, INT_MAX);
      bridge_.join();
      throw;
    }
  } catch (const std::exception& e) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    CloseFds();
    throw SegmentError(what + ": cannot start a thread: " + e.what());
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  started_ = true;
}

void Watcher::Stop() noexcept {
  std::lock_guard<std::mutex> lock(stop_mutex_);
  if (started_) {
    started_ = false;
    // Order matters: stopping_ first, then the bump, so a bridge that sees
    // the bumped value (or is woken by it) also sees stopping_.
    stopping_.store(true, std::memory_order_seq_cst);
    uint32_t* wake = &segment_->header()->agent_wake;
    __atomic_fetch_add(wake, 1u, __ATOMIC_SEQ_CST);
    FutexWake(wake, INT_MAX);
    SignalEventFd(event_fd_);
    bridge_.join();
    watcher_.join();
  }
  CloseFds();
}

void Watcher::CloseFds() noexcept {
  for (auto& entry : tracked_) {
    if (entry.second.pidfd >= 0) close(entry.second.pidfd);
    entry.second.pidfd = -1;
  }
  tracked_.clear();
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (event_fd_ >= 0) close(event_fd_);
  epoll_fd_ = event_fd_ = -1;
}

void Watcher::BridgeLoop(uint32_t seen) {
  uint32_t* wake = &segment_->header()->agent_wake;
  while (!stopping_.load(std::memory_order_acquire)) {
    // No timeout: with nothing happening this thread costs nothing. EAGAIN
    // (the word moved before we slept) and EINTR are normal.
    if (FutexWait(wake, seen) != 0 && errno != EAGAIN && errno != EINTR) {
      const int err = errno;
      {
        std::lock_guard<std::mutex> lock(bridge_error_mutex_);
        bridge_error_ = SysError("waiting on agent_wake of control segment " + segment_->name() + " failed", err).what();
      }
      SignalEventFd(event_fd_);
      return;  // a wait that fails once fails always: spinning would help no one
    }
    const uint32_t now = LoadAcquire(wake);
    if (now == seen) continue;  // spurious wake-up
    seen = now;
    SignalEventFd(event_fd_);
  }
}

void Watcher::WatchLoop() {
  ScanSlots();  // ranks that attached before watch() was called
  struct epoll_event events[32];
  while (!stopping_.load(std::memory_order_acquire) && !sink_closed_.load(std::memory_order_relaxed)) {
    const int n = epoll_wait(epoll_fd_, events, 32, -1);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      EmitError(SysError("watching control segment " + segment_->name() + " failed (epoll_wait)", err).what());
      return;
    }
    bool woke = false;
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 == kWakeKey) {
        uint64_t count;
        ssize_t r = read(event_fd_, &count, sizeof count);  // resets the counter; EAGAIN if already drained
        (void)r;
        woke = true;
      } else {
        RankExited(events[i].data.u64);
      }
    }
    if (stopping_.load(std::memory_order_acquire)) return;
    if (woke) {
      std::string bridge_error;
      {
        std::lock_guard<std::mutex> lock(bridge_error_mutex_);
        bridge_error.swap(bridge_error_);
      }
      if (!bridge_error.empty()) EmitError(bridge_error);
      ScanSlots();
      EmitChanged();
    }
  }
}

void Watcher::ScanSlots() {
  const uint32_t slots = segment_->slot_count();
  for (uint32_t i = 0; i < slots; i++) {
    symbio_slot_fixed* s = segment_->slot(i);
    // state with acquire: the shim publishes it after pid and world_rank.
    const uint32_t state = LoadAcquire(&s->state);
    if (state == SYMBIO_ST_EMPTY || state > SYMBIO_ST_DETACHED) continue;  // snapshot() reports bad states
    const int32_t pid = LoadRelaxed(&s->pid);
    if (pid <= 0) continue;
    const uint64_t key = KeyOf(i, pid);
    if (tracked_.count(key) != 0) continue;
    const int32_t world_rank = LoadRelaxed(&s->world_rank);

    // The slot now belongs to another process: forget the exited ones it had.
    for (auto it = tracked_.begin(); it != tracked_.end();) {
      if (it->second.slot == i && it->second.exited) {
        it = tracked_.erase(it);
      } else {
        ++it;
      }
    }
    Tracked t{i, pid, world_rank, -1, false};
    // There is a window between the rank writing its pid and this call in
    // which it could die and its pid be reused; a pidfd cannot close it (only
    // the rank could hand us one). Ranks are children of a launcher that reaps
    // them, so the window is the time until this scan: small.
    const int fd = static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0u));
    const int err = errno;
    auto attached = std::make_unique<WatchEvent>();
    attached->kind = WatchEvent::Kind::kRankAttached;
    attached->slot = i;
    attached->pid = pid;
    attached->world_rank = world_rank;
    if (fd < 0) {
      t.exited = true;
      tracked_.emplace(key, t);
      Emit(std::move(attached));
      if (err == ESRCH) {
        auto gone = std::make_unique<WatchEvent>();
        gone->kind = WatchEvent::Kind::kRankExit;
        gone->slot = i;
        gone->pid = pid;
        gone->world_rank = world_rank;
        Emit(std::move(gone));  // it died before we could watch it
      } else {
        EmitError(SysError("cannot watch rank pid " + std::to_string(pid) + " (slot " + std::to_string(i) +
                               ") of control segment " + segment_->name() + " for exit",
                           err)
                      .what());
      }
      continue;
    }
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u64 = key;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      const int add_err = errno;
      close(fd);
      t.exited = true;
      tracked_.emplace(key, t);
      Emit(std::move(attached));
      EmitError(SysError("cannot watch rank pid " + std::to_string(pid) + " (slot " + std::to_string(i) + ")", add_err)
                    .what());
      continue;
    }
    t.pidfd = fd;
    tracked_.emplace(key, t);
    Emit(std::move(attached));
  }
}

void Watcher::RankExited(uint64_t key) {
  auto it = tracked_.find(key);
  if (it == tracked_.end() || it->second.exited) return;
  Tracked& t = it->second;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, t.pidfd, nullptr);
  close(t.pidfd);
  t.pidfd = -1;
  t.exited = true;
  auto event = std::make_unique<WatchEvent>();
  event->kind = WatchEvent::Kind::kRankExit;
  event->slot = t.slot;
  event->pid = t.pid;
  event->world_rank = t.world_rank;
  Emit(std::move(event));
}

bool Watcher::Emit(std::unique_ptr<WatchEvent> event) {
  if (sink_closed_.load(std::memory_order_relaxed)) return false;
  if (!sink_(std::move(event))) {
    sink_closed_.store(true, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void Watcher::EmitChanged() {
  // Coalescing: if a 'changed' is still queued, JS has not looked yet and
  // will see this change too when it does.
  if (changed_pending_.exchange(true, std::memory_order_acq_rel)) return;
  auto event = std::make_unique<WatchEvent>();
  event->kind = WatchEvent::Kind::kChanged;
  if (!Emit(std::move(event))) changed_pending_.store(false, std::memory_order_release);
}

void Watcher::EmitError(const std::string& message) {
  auto event = std::make_unique<WatchEvent>();
  event->kind = WatchEvent::Kind::kError;
  event->message = message;
  Emit(std::move(event));
}

}  // namespace symbio
