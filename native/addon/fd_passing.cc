#include "fd_passing.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "sys_error.h"

namespace symbio {

namespace {

// How long sendFd waits, at most, for room in the socket's send buffer. QMP
// traffic is a few hundred bytes, so waiting at all is rare; the bound keeps
// a peer that stopped reading from blocking the event loop for long.
constexpr int kSendWaitMs = 1000;
// SCM_RIGHTS rides on the first byte; the payload is a command or a filler.
constexpr size_t kMaxPayload = 64 * 1024;

std::string ErrnoName(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  if (const char* name = strerrorname_np(err)) return name;
#endif
  return "errno " + std::to_string(err);
}

// An Error like Node's own system errors: "<what>: <text> (ENAME)", with
// code, errno (negative, as libuv reports it) and syscall set.
Napi::Error SystemError(Napi::Env env, const char* syscall, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + ErrnoText(err));
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw Napi::TypeError::New(env, std::string(fn) + ": " + name + " must be a number");
  }
  const double raw = info[i].As<Napi::Number>().DoubleValue();
  if (!(raw >= 0 && raw <= 0x7fffffff) || raw != std::floor(raw)) {
    throw Napi::RangeError::New(env, std::string(fn) + ": " + name + " must be a non-negative integer file descriptor");
  }
  return static_cast<int>(raw);
}

int64_t NowMs() {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0;  // cannot fail for CLOCK_MONOTONIC
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

}  // namespace

// sendFd(socketFd, fd, data) -> bytes sent (always data.length).
Napi::Value SendFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int sock = FdArg(info, 0, "sendFd", "socketFd");
  const int fd = FdArg(info, 1, "sendFd", "fd");
  if (info.Length() < 3 || !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(env, "sendFd: data must be a Buffer or Uint8Array");
  }
  Napi::Uint8Array data = info[2].As<Napi::Uint8Array>();
  const size_t len = data.ByteLength();
  if (len == 0 || len > kMaxPayload) {
    // A stream socket carries ancillary data only along with at least one byte.
    throw Napi::RangeError::New(env, "sendFd: data must hold 1 to " + std::to_string(kMaxPayload) + " bytes (the fd travels with the first)");
  }
  const char* bytes = reinterpret_cast<const char*>(data.Data());

  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  std::memset(&control, 0, sizeof control);

  size_t sent = 0;
  const int64_t deadline = NowMs() + kSendWaitMs;
  while (sent < len) {
    struct iovec iov;
    iov.iov_base = const_cast<char*>(bytes + sent);
    iov.iov_len = len - sent;
    struct msghdr msg;
    std::memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (sent == 0) {
      msg.msg_control = control.buf;
      msg.msg_controllen = sizeof control.buf;
      struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    const ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    const int err = n < 0 ? errno : EIO;  // 0 bytes for a non-empty send: treat as an I/O error
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) {
      throw SystemError(env, "sendmsg",
                        "sendFd: cannot send fd " + std::to_string(fd) + " on socket fd " + std::to_string(sock) +
                            (sent ? " (after " + std::to_string(sent) + " of " + std::to_string(len) + " bytes)" : ""),
                        err);
    }
    // A non-blocking socket (Node's are) with a full send buffer: wait for room.
    for (;;) {
      const int64_t left = deadline - NowMs();
      if (left <= 0) {
        throw SystemError(env, "poll",
                          "sendFd: socket fd " + std::to_string(sock) + " took no data for " + std::to_string(kSendWaitMs) +
                              " ms (" + std::to_string(sent) + " of " + std::to_string(len) + " bytes sent)",
                          ETIMEDOUT);
      }
      struct pollfd p;
      p.fd = sock;
      p.events = POLLOUT;
      p.revents = 0;
      const int r = poll(&p, 1, static_cast<int>(left));
      if (r < 0) {
        const int perr = errno;
        if (perr == EINTR) continue;
        throw SystemError(env, "poll", "sendFd: waiting to write to socket fd " + std::to_string(sock), perr);
      }
      break;  // writable, an error condition (sendmsg reports it), or the deadline (checked above)
    }
  }
  return Napi::Number::New(env, static_cast<double>(sent));
}

}  // namespace symbio
