// sendFd(socketFd, fd, data): send `data` on a connected Unix stream socket
// with the open file descriptor `fd` attached (SCM_RIGHTS, on the first
// byte): something Node's net module cannot do. The QMP client hands QEMU
// an open state file this way (QMP `getfd`, then `migrate fd:NAME`), so
// QEMU writes a checkpoint itself instead of streaming it through Node.
//
// Synchronous (Node's sockets are non-blocking; a full send buffer is
// waited out for at most a second). A failed system call throws an Error
// whose message names the descriptors and the errno text, with `code`
// ("EBADF"), `errno` and `syscall` ("sendmsg") set as on Node's own errors.
#pragma once
#include <napi.h>

namespace symbio {
Napi::Value SendFd(const Napi::CallbackInfo& info);
}  // namespace symbio
