// symbio.node: the node side of the control segment (see
// native/common/symbio_segment.h and src/native.ts, its only importer).
//
// Per-environment state lives in the Napi::Addon instance, so the addon works
// in worker threads too: each environment gets its own class constructor.
#include <napi.h>

#include "control_segment.h"
#include "fd_passing.h"
#include "peer_credentials.h"
#include "symbio_segment.h"

namespace symbio {

class SymbioAddon : public Napi::Addon<SymbioAddon> {
 public:
  SymbioAddon(Napi::Env env, Napi::Object exports) {
    Napi::Function control_segment = ControlSegment::Define(env);
    control_segment_ = Napi::Persistent(control_segment);

    // The ABI limits, so TypeScript can check arguments and print them in
    // messages without duplicating the header's numbers.
    Napi::Object abi = Napi::Object::New(env);
    abi.Set("version", SYMBIO_ABI_VERSION);
    abi.Set("headerBytes", SYMBIO_HEADER_BYTES);
    abi.Set("maxSlots", SYMBIO_MAX_SLOTS);
    abi.Set("maxWorld", SYMBIO_MAX_WORLD);
    abi.Set("maxComms", SYMBIO_MAX_COMMS);
    abi.Set("jobIdBytes", SYMBIO_JOB_ID_BYTES);
    abi.Set("maxEpoch", kEpochMask);
    abi.Freeze();

    DefineAddon(exports, {
                             InstanceValue("ControlSegment", control_segment, napi_enumerable),
                             InstanceValue("abi", abi, napi_enumerable),
                             InstanceValue("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"),
                                           napi_enumerable),
                             InstanceValue("sendFd", Napi::Function::New(env, SendFd, "sendFd"), napi_enumerable),
                         });
  }

 private:
  // Keeps the class alive for the environment's lifetime.
  Napi::FunctionReference control_segment_;
};

}  // namespace symbio

// The macro pastes the class name into an identifier: no namespace qualifier.
using symbio::SymbioAddon;
NODE_API_ADDON(SymbioAddon)
