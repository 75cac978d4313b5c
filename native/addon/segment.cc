// Segment: create / map / command / unlink one control segment. See segment.h.
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <limits>

#include "shared_memory.h"
#include "sys_error.h"

namespace symbio {

namespace {

// Where glibc keeps POSIX shm objects; used only in messages telling a person
// which file to remove.
std::string DevShmPath(const std::string& name) { return "/dev/shm" + name; }

// RAII for the fd while a create/inspect is half done.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Longest prefix of `s` that fits in `max` bytes without cutting a UTF-8
// sequence in half (a cut just before a continuation byte backs off to the
// start of that character), so the C side and JS both see valid text.
size_t Utf8PrefixLength(const std::string& s, size_t max) {
  if (s.size() <= max) return s.size();
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0u) == 0x80u) n--;
  return n;
}

}  // namespace

const char* Segment::CommandName(uint32_t command) {
  switch (command) {
    case SYMBIO_CMD_RUN: return "run";
    case SYMBIO_CMD_HOLD: return "hold";
    case SYMBIO_CMD_FREEZE: return "freeze";
    default: return "unknown";
  }
}

void Segment::ValidateName(const std::string& name) {
  // POSIX leaves names without a leading '/' or with further '/'s
  // implementation-defined; glibc maps "/x" to /dev/shm/x, so the part after
  // the '/' is one file name (NAME_MAX bytes at most, not "." or "..").
  if (name.size() < 2 || name[0] != '/') {
    throw SegmentError("control segment name must start with '/' and have at least one more character (got \"" +
                       name + "\")");
  }
  if (name.size() - 1 > NAME_MAX) {
    throw SegmentError("control segment name is longer than " + std::to_string(NAME_MAX) + " bytes after the '/'");
  }
  if (name.find('/', 1) != std::string::npos || name.find('\0') != std::string::npos) {
    throw SegmentError("control segment name \"" + name + "\" may not contain '/' (after the first) or NUL");
  }
  if (name == "/." || name == "/..") {
    throw SegmentError("control segment name \"" + name + "\" is not a file name");
  }
}

std::unique_ptr<Segment> Segment::Create(const SegmentConfig& config) {
  ValidateName(config.name);
  const std::string& name = config.name;
  if (config.slots == 0 || config.slots > SYMBIO_MAX_SLOTS) {
    throw SegmentError("slots must be in 1.." + std::to_string(SYMBIO_MAX_SLOTS) + " (got " +
                       std::to_string(config.slots) + ")");
  }
  if (config.world_size == 0 || config.world_size > SYMBIO_MAX_WORLD) {
    throw SegmentError("worldSize must be in 1.." + std::to_string(SYMBIO_MAX_WORLD) + " (got " +
                       std::to_string(config.world_size) + ")");
  }
  if (config.resume_timeout_ms == 0) throw SegmentError("resumeTimeoutMs must be at least 1");
  if (config.job_id.find('\0') != std::string::npos) throw SegmentError("jobId may not contain NUL");

  const uint64_t bytes = symbio_segment_bytes(config.slots, config.world_size);
  const uint64_t slot_bytes = symbio_slot_bytes(config.world_size);
  // At the limits this is ~68 GiB: fine for 64-bit size_t/off_t, but say so
  // clearly anywhere it is not rather than truncating.
  if (bytes > static_cast<uint64_t>(std::numeric_limits<off_t>::max()) ||
      bytes > static_cast<uint64_t>(std::numeric_limits<size_t>::max()) ||
      slot_bytes > std::numeric_limits<uint32_t>::max()) {
    throw SegmentError("control segment " + name + " would be " + std::to_string(bytes) +
                       " bytes, more than this platform can map");
  }

  // Allocated before the object exists so that nothing after shm_open can
  // fail for lack of memory and leave a mapping behind.
  std::unique_ptr<Segment> seg(new Segment());
  seg->name_ = name;
  FdGuard fd(shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == EEXIST) {
      throw SegmentError("control segment " + name + " already exists (another symbio on this job?); remove " +
                         DevShmPath(name) + " if it is stale");
    }
    throw SysError("cannot create control segment " + name, err);
  }
  // From here on the object is ours: any failure must unlink it again.
  auto fail = [&](const std::string& what, int err) -> SegmentError {
    shm_unlink(name.c_str());
    return SysError(what, err);
  };
  // The umask may have cleared bits of 0600 but never added any; fchmod makes
  // the mode exactly 0600 whatever the umask was.
  if (fchmod(fd.get(), 0600) != 0) {
    const int err = errno;  // before anything else can change it
    throw fail("cannot set mode 0600 on control segment " + name, err);
  }
  int rc;
  while ((rc = ftruncate(fd.get(), static_cast<off_t>(bytes))) != 0 && errno == EINTR) {
  }
  if (rc != 0) {
    const int err = errno;  // before anything else can change it
    throw fail("cannot size control segment " + name + " to " + std::to_string(bytes) + " bytes", err);
  }
  // tmpfs allocates pages lazily: without a reservation a full /dev/shm would
  // surface later as SIGBUS inside an MPI rank touching its slot. fallocate
  // turns that into an error here. (EOPNOTSUPP: not tmpfs; nothing to reserve.)
  while ((rc = fallocate(fd.get(), 0, 0, static_cast<off_t>(bytes))) != 0 && errno == EINTR) {
  }
  const int fallocate_err = rc != 0 ? errno : 0;
  if (rc != 0 && fallocate_err != EOPNOTSUPP && fallocate_err != ENOSYS) {
    throw fail("cannot reserve " + std::to_string(bytes) + " bytes for control segment " + name +
                   " (is /dev/shm full?)",
               fallocate_err);
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0) {
    const int err = errno;  // before anything else can change it
    throw fail("cannot stat control segment " + name, err);
  }
  void* base = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED) {
    const int err = errno;  // before anything else can change it
    throw fail("cannot map control segment " + name, err);
  }

  seg->fd_ = fd.release();
  seg->base_ = base;
  seg->mapped_bytes_ = bytes;
  seg->slot_bytes_ = slot_bytes;
  seg->slot_count_ = config.slots;
  seg->world_size_ = config.world_size;
  seg->dev_ = st.st_dev;
  seg->ino_ = st.st_ino;

  // The object is freshly truncated, so every byte is zero: slots are EMPTY,
  // catch-up tables empty, cmd = SYMBIO_CMD_WORD(0, RUN) = 0, agent_wake = 0.
  symbio_seg_header* h = seg->header();
  h->abi_version = SYMBIO_ABI_VERSION;
  h->header_bytes = SYMBIO_HEADER_BYTES;
  h->segment_bytes = bytes;
  h->slot_count = config.slots;
  h->slot_bytes = static_cast<uint32_t>(slot_bytes);
  h->world_size = config.world_size;
  h->max_comms = SYMBIO_MAX_COMMS;
  h->agent_pid = static_cast<int32_t>(getpid());
  h->resume_timeout_ms = config.resume_timeout_ms;
  h->created_ns = ClockNs(CLOCK_REALTIME);
  std::memcpy(h->job_id, config.job_id.data(), Utf8PrefixLength(config.job_id, SYMBIO_JOB_ID_BYTES - 1));
  StoreRelaxed(&h->cmd_set_ns, ClockNs(CLOCK_MONOTONIC));
  StoreRelaxed(&h->cmd, static_cast<uint32_t>(SYMBIO_CMD_WORD(0, SYMBIO_CMD_RUN)));
  // The magic goes last, with release ordering: a rank that opens the name
  // early and loads the magic with acquire either sees zero (not ready yet) or
  // a complete header.
  StoreRelease(&h->magic, static_cast<uint64_t>(SYMBIO_SEG_MAGIC));
  return seg;
}

HeaderInfo Segment::Inspect(const std::string& name) {
  ValidateName(name);
  FdGuard fd(shm_open(name.c_str(), O_RDONLY, 0));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) throw SegmentError("control segment " + name + " does not exist");
    throw SysError("cannot open control segment " + name, err);
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0) {
    const int err = errno;  // before anything else can change it
    throw SysError("cannot stat control segment " + name, err);
  }
  const uint64_t size = st.st_size < 0 ? 0 : static_cast<uint64_t>(st.st_size);
  if (size < SYMBIO_HEADER_BYTES) {
    throw SegmentError("control segment " + name + " is truncated: " + std::to_string(size) +
                       " bytes, smaller than its " + std::to_string(SYMBIO_HEADER_BYTES) + "-byte header");
  }
  // pread, not mmap: the object may be shrunk by someone else at any moment,
  // and a read(2) past the end just comes back short where a load from a
  // mapping would raise SIGBUS. Only the header is needed.
  symbio_seg_header h;
  size_t got = 0;
  while (got < sizeof h) {
    ssize_t r = pread(fd.get(), reinterpret_cast<char*>(&h) + got, sizeof h - got, static_cast<off_t>(got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;  // before anything else can change it
      throw SysError("cannot read control segment " + name, err);
    }
    if (r == 0) {
      throw SegmentError("control segment " + name + " is truncated: it shrank below its header while being read");
    }
    got += static_cast<size_t>(r);
  }
  if (const char* problem = symbio_header_problem(&h, size)) {
    throw SegmentError("control segment " + name + " is not usable: " + problem);
  }
  if (SYMBIO_CMD_OF(h.cmd) > SYMBIO_CMD_FREEZE) {
    throw SegmentError("control segment " + name + " is not usable: its command word holds no known command");
  }
  HeaderInfo info;
  info.name = name;
  info.abi_version = h.abi_version;
  info.slot_count = h.slot_count;
  info.world_size = h.world_size;
  info.agent_pid = h.agent_pid;
  info.resume_timeout_ms = h.resume_timeout_ms;
  // The id need not be NUL-terminated in a foreign segment: bound it.
  info.job_id.assign(h.job_id, strnlen(h.job_id, sizeof h.job_id));
  info.epoch = SYMBIO_CMD_EPOCH(h.cmd);
  info.command = SYMBIO_CMD_OF(h.cmd);
  info.segment_bytes = h.segment_bytes;
  info.created_ns = h.created_ns;
  return info;
}

Segment::~Segment() { Close(); }

symbio_slot_fixed* Segment::slot(uint32_t i) const {
  return reinterpret_cast<symbio_slot_fixed*>(static_cast<char*>(base_) + SYMBIO_HEADER_BYTES +
                                              static_cast<uint64_t>(i) * slot_bytes_);
}

void Segment::RequireOpen(const char* what) const {
  if (!is_open()) throw SegmentError(std::string("cannot ") + what + ": control segment " + name_ + " is closed");
}

uint32_t Segment::Publish(uint32_t command) {
  symbio_seg_header* h = header();
  command_ = command;
  // cmd_set_ns first, then the word with release ordering: a rank that
  // acquires the new word also sees when it was set.
  StoreRelaxed(&h->cmd_set_ns, ClockNs(CLOCK_MONOTONIC));
  StoreRelease(&h->cmd, static_cast<uint32_t>(SYMBIO_CMD_WORD(epoch_, command)));
  // Ranks that sleep on cmd (held, frozen) re-check it. FUTEX_WAKE can only
  // fail for a bad address, which a live mapping is not; ranks that are not
  // asleep see the word at their next MPI call anyway.
  FutexWake(&h->cmd, INT_MAX);
  return epoch_;
}

uint32_t Segment::Hold() { return Hold((epoch_ + 1) & kEpochMask); }

uint32_t Segment::Hold(uint32_t epoch) {
  RequireOpen("hold");
  // A controller that quiesces several nodes picks one epoch for all of them;
  // it must be new on every node (ranks tell epochs apart by equality), and
  // never going back keeps a late rank from mistaking an old order for it.
  if (epoch > kEpochMask || epoch <= epoch_) {
    throw SegmentError("hold: epoch " + std::to_string(epoch) + " is not after the current epoch " +
                       std::to_string(epoch_) + " (or above " + std::to_string(kEpochMask) + ")");
  }
  epoch_ = epoch;
  return Publish(SYMBIO_CMD_HOLD);
}

uint32_t Segment::Freeze() {
  RequireOpen("freeze");
  // Freezing ranks that were never held would stop them with messages still
  // in flight: the protocol is hold, drain, then freeze.
  if (command_ == SYMBIO_CMD_RUN) {
    throw SegmentError("cannot freeze control segment " + name_ + ": ranks are running (hold them first)");
  }
  return Publish(SYMBIO_CMD_FREEZE);
}

uint32_t Segment::Resume() {
  RequireOpen("resume");
  return Publish(SYMBIO_CMD_RUN);
}

void Segment::SetCatchup(uint32_t slot_index, uint32_t epoch, const symbio_comm_pub* entries, uint32_t count) {
  RequireOpen("set a catch-up table");
  if (slot_index >= slot_count_) {
    throw SegmentError("slot " + std::to_string(slot_index) + " is out of range (segment " + name_ + " has " +
                       std::to_string(slot_count_) + " slots)");
  }
  if (epoch > kEpochMask) {
    throw SegmentError("epoch " + std::to_string(epoch) + " is out of range (0.." + std::to_string(kEpochMask) + ")");
  }
  if (count > SYMBIO_MAX_COMMS) {
    throw SegmentError("a catch-up table holds at most " + std::to_string(SYMBIO_MAX_COMMS) + " entries (got " +
                       std::to_string(count) + ")");
  }
  symbio_slot_fixed* s = slot(slot_index);
  // Seqlock-style publication: the count drops to 0 before any entry changes
  // and is raised again (release) only after entries and epoch are written, so
  // a rank that acquires a non-zero count sees the entries that go with it.
  StoreRelaxed(&s->catchup_count, 0u);
  FenceRelease();
  for (uint32_t i = 0; i < SYMBIO_MAX_COMMS; i++) {
    // Unused entries are zeroed so a stale table never shows through.
    StoreRelaxed(&s->catchup[i].gid, i < count ? entries[i].gid : 0);
    StoreRelaxed(&s->catchup[i].seq, i < count ? entries[i].seq : 0);
  }
  StoreRelaxed(&s->catchup_epoch, epoch);
  StoreRelease(&s->catchup_count, count);
  // Held ranks sleep on cmd, not on their slot: wake them so they re-check.
  FutexWake(&header()->cmd, INT_MAX);
}

void Segment::CheckIntact() const {
  RequireOpen("read");
  struct stat st;
  if (fstat(fd_, &st) != 0) {
    const int err = errno;  // before anything else can change it
    throw SysError("cannot stat control segment " + name_, err);
  }
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < mapped_bytes_) {
    throw SegmentError("control segment " + name_ + " was truncated by another process (" +
                       std::to_string(st.st_size) + " of " + std::to_string(mapped_bytes_) + " bytes left)");
  }
}

bool Segment::Intact() const noexcept {
  struct stat st;
  return is_open() && fstat(fd_, &st) == 0 && st.st_size >= 0 && static_cast<uint64_t>(st.st_size) >= mapped_bytes_;
}

void Segment::Close() noexcept {
  if (!is_open()) return;
  // (Not if someone truncated the object: touching the lost header page
  // would raise SIGBUS, and the ranks cannot read it either.)
  if (command_ != SYMBIO_CMD_RUN && Intact()) Publish(SYMBIO_CMD_RUN);
  munmap(base_, static_cast<size_t>(mapped_bytes_));
  base_ = nullptr;
  close(fd_);
  fd_ = -1;
  // Unlink only if the name still refers to our object: after someone removed
  // a "stale" segment by hand and another agent created a new one under the
  // same name, unlinking blindly would pull the name out from under that one.
  int fd = shm_open(name_.c_str(), O_RDONLY, 0);
  if (fd >= 0) {
    struct stat st;
    const bool ours = fstat(fd, &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_;
    close(fd);
    if (ours) shm_unlink(name_.c_str());
  }
}

}  // namespace symbio
