// peerCredentials(fd): who is at the other end of a connected Unix socket
// (SO_PEERCRED). Node's net module cannot ask the kernel this; the controller
// uses it to accept only its own user (or root) on the local socket.
#pragma once
#include <napi.h>

namespace symbio {
Napi::Value PeerCredentials(const Napi::CallbackInfo& info);
}  // namespace symbio
