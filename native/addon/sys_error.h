// One-line error messages for failed system calls and bad shared memory.
//
// Everything the addon throws is a SegmentError whose what() is a complete,
// single-line sentence naming the shm path (where there is one) and, for a
// failed system call, the errno text and symbolic name, e.g.
//   "cannot open control segment /symbio-x: No such file or directory (ENOENT)"
// The JS binding turns it into a plain Error with that message.
#ifndef SYMBIO_ADDON_SYS_ERROR_H
#define SYMBIO_ADDON_SYS_ERROR_H

#include <string.h>

#include <stdexcept>
#include <string>

namespace symbio {

class SegmentError : public std::runtime_error {
 public:
  explicit SegmentError(const std::string& message) : std::runtime_error(message) {}
};

// strerror_r has two incompatible signatures (XSI returns int, GNU returns
// char*); these overloads accept whichever one the C library declares.
inline const char* StrerrorResult(int rc, const char* buf) { return rc == 0 ? buf : "unknown error"; }
inline const char* StrerrorResult(const char* text, const char* /*buf*/) { return text; }

// "No such file or directory (ENOENT)": strerror_r is thread-safe (the watcher
// thread formats errors too), strerrorname_np adds the name people grep for.
inline std::string ErrnoText(int err) {
  char buf[256];
  buf[0] = '\0';
  std::string text = StrerrorResult(strerror_r(err, buf, sizeof buf), buf);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  if (const char* name = strerrorname_np(err)) {
    text += " (";
    text += name;
    text += ")";
  }
#endif
  return text;
}

// "<what>: <errno text>"; `err` is passed in explicitly because anything
// between the failing call and here (even building strings) may clobber errno.
inline SegmentError SysError(const std::string& what, int err) {
  return SegmentError(what + ": " + ErrnoText(err));
}

}  // namespace symbio

#endif
