// Access to words of the control segment, which other processes (the ranks'
// shims, written in C11) read and write concurrently.
//
// C++17 has no std::atomic_ref and the segment's fields are plain integers (the
// ABI header is C), so the GCC/Clang __atomic builtins are used on them: they
// are what C11's atomic_load_explicit / atomic_store_explicit compile to for
// these aligned 4- and 8-byte words, so both sides agree on single-copy
// atomicity and ordering. Every field is naturally aligned (the header's
// layout and static_asserts guarantee it; mmap returns page-aligned memory).
#ifndef SYMBIO_ADDON_SHARED_MEMORY_H
#define SYMBIO_ADDON_SHARED_MEMORY_H

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>

namespace symbio {

template <typename T>
inline T LoadRelaxed(const T* p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}
template <typename T>
inline T LoadAcquire(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T>
inline void StoreRelaxed(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
template <typename T>
inline void StoreRelease(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
inline void FenceAcquire() { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
inline void FenceRelease() { __atomic_thread_fence(__ATOMIC_RELEASE); }

// A 64-bit word that may alias the segment's mixed 32/64-bit fields; used to
// copy a slot's fixed part word by word (every uint64 field is 8-aligned, so
// each field is read by exactly one single-copy-atomic load).
typedef uint64_t __attribute__((may_alias)) AliasedU64;

// Shared (not FUTEX_PRIVATE_FLAG) futex operations: the waiters are other
// processes that map the same shm object, so the kernel must key the futex on
// the backing page, not on this process's address space.
inline long FutexWake(uint32_t* addr, int count) {
  return syscall(SYS_futex, addr, FUTEX_WAKE, count, nullptr, nullptr, 0);
}
inline long FutexWait(uint32_t* addr, uint32_t expected) {
  return syscall(SYS_futex, addr, FUTEX_WAIT, expected, nullptr, nullptr, 0);
}

inline uint64_t ClockNs(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);  // cannot fail for CLOCK_MONOTONIC / CLOCK_REALTIME
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace symbio

#endif
