// ControlSegment: the JS class over one Segment (+ its Watcher). Argument
// checking, conversion to and from JS values, the thread-safe function that
// carries watch events, and cleanup on close(), GC and environment teardown.
#ifndef SYMBIO_ADDON_CONTROL_SEGMENT_H
#define SYMBIO_ADDON_CONTROL_SEGMENT_H

#include <napi.h>  // NAPI_VERSION etc. come from the build (CMakeLists.txt / binding.gyp)

#include <memory>

#include "segment.h"
#include "watcher.h"

namespace symbio {

// Shared by the binding and the thread-safe function (as its context and, via
// a heap shared_ptr, its finalizer data), so whichever is torn down last
// frees it.
struct WatchState {
  std::unique_ptr<Watcher> watcher;
  bool tsfn_finalized = false;  // main thread only
};

class ControlSegment : public Napi::ObjectWrap<ControlSegment> {
 public:
  static Napi::Function Define(Napi::Env env);

  explicit ControlSegment(const Napi::CallbackInfo& info);
  ~ControlSegment() override;

 private:
  static void CallJs(Napi::Env env, Napi::Function callback, WatchState* state, WatchEvent* event);
  using EventTsfn = Napi::TypedThreadSafeFunction<WatchState, WatchEvent, CallJs>;
  static void FinalizeTsfn(Napi::Env env, std::shared_ptr<WatchState>* keep, WatchState* state);
  static void EnvCleanup(void* self);

  static Napi::Value Inspect(const Napi::CallbackInfo& info);
  Napi::Value GetName(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value Hold(const Napi::CallbackInfo& info);
  Napi::Value Freeze(const Napi::CallbackInfo& info);
  Napi::Value Resume(const Napi::CallbackInfo& info);
  Napi::Value Command(const Napi::CallbackInfo& info);
  Napi::Value SetCatchup(const Napi::CallbackInfo& info);
  Napi::Value Snapshot(const Napi::CallbackInfo& info);
  Napi::Value Watch(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  // Bodies of the longer methods, run inside Guarded() by the wrappers above.
  Napi::Value SetCatchupImpl(Napi::Env env, const Napi::CallbackInfo& info);
  Napi::Value SnapshotImpl(Napi::Env env, const Napi::CallbackInfo& info);
  Napi::Value WatchImpl(Napi::Env env, const Napi::CallbackInfo& info);

  Segment& RequireOpen(Napi::Env env, const char* what);
  // Everything close() does; also run by the destructor and the env cleanup
  // hook. Never calls into JS.
  void CloseAll() noexcept;

  napi_env env_ = nullptr;
  std::shared_ptr<Segment> segment_;
  std::shared_ptr<WatchState> watch_;
  EventTsfn tsfn_;
  bool cleanup_hook_registered_ = false;
  bool closed_ = false;
};

}  // namespace symbio

#endif
