// ControlSegment: JS binding of Segment / SnapshotReader / Watcher. See .h.
#include "control_segment.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "snapshot_reader.h"
#include "sys_error.h"

namespace symbio {

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

std::string FormatNumber(double d) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", d);
  return buf;
}

std::string RequireString(Napi::Env env, Napi::Value value, const std::string& what) {
  if (!value.IsString()) throw Napi::TypeError::New(env, what + " must be a string");
  return value.As<Napi::String>().Utf8Value();
}

// An integer in [min, max] given as a JS number (no strings, no fractions,
// no NaN): arguments arrive from TypeScript callers, but the addon must not
// trust them more than it trusts the ranks.
double RequireInteger(Napi::Env env, Napi::Value value, const std::string& what, double min, double max) {
  if (!value.IsNumber()) throw Napi::TypeError::New(env, what + " must be a number");
  const double d = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || d < min || d > max) {
    throw Napi::RangeError::New(env, what + " must be an integer in " + FormatNumber(min) + ".." + FormatNumber(max) +
                                         " (got " + FormatNumber(d) + ")");
  }
  return d;
}

uint32_t RequireUint32(Napi::Env env, Napi::Value value, const std::string& what, uint32_t min, uint32_t max) {
  return static_cast<uint32_t>(RequireInteger(env, value, what, min, max));
}

// Communicator ids are u64s, beyond what a JS number holds exactly, so they
// travel as decimal strings.
uint64_t RequireU64String(Napi::Env env, Napi::Value value, const std::string& what) {
  if (!value.IsString()) throw Napi::TypeError::New(env, what + " must be a decimal string (a u64)");
  const std::string s = value.As<Napi::String>().Utf8Value();
  const auto bad = [&]() {
    return Napi::RangeError::New(env, what + " must be a decimal string of an integer in 0..18446744073709551615 (got \"" +
                                          s + "\")");
  };
  if (s.empty() || s.size() > 20) throw bad();
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') throw bad();
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - digit) / 10) throw bad();
    v = v * 10 + digit;
  }
  return v;
}

// node-addon-api turns only Napi::Error into a JS exception; any other C++
// exception leaving a callback would terminate the process. Every entry point
// runs its body through this, so SegmentError (and bad_alloc, ...) become
// plain JS Errors with the same one-line message.
template <typename Body>
auto Guarded(Napi::Env env, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

const char* EventType(WatchEvent::Kind kind) {
  switch (kind) {
    case WatchEvent::Kind::kChanged: return "changed";
    case WatchEvent::Kind::kRankAttached: return "rank-attached";
    case WatchEvent::Kind::kRankExit: return "rank-exit";
    case WatchEvent::Kind::kError: return "error";
  }
  return "error";
}

}  // namespace

Napi::Function ControlSegment::Define(Napi::Env env) {
  return DefineClass(env, "ControlSegment",
                     {
                         StaticMethod<&ControlSegment::Inspect>("inspect"),
                         InstanceAccessor<&ControlSegment::GetName>("name"),
                         InstanceAccessor<&ControlSegment::GetClosed>("closed"),
                         InstanceMethod<&ControlSegment::Hold>("hold"),
                         InstanceMethod<&ControlSegment::Freeze>("freeze"),
                         InstanceMethod<&ControlSegment::Resume>("resume"),
                         InstanceMethod<&ControlSegment::Command>("command"),
                         InstanceMethod<&ControlSegment::SetCatchup>("setCatchup"),
                         InstanceMethod<&ControlSegment::Snapshot>("snapshot"),
                         InstanceMethod<&ControlSegment::Watch>("watch"),
                         InstanceMethod<&ControlSegment::Close>("close"),
                     });
}

ControlSegment::ControlSegment(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ControlSegment>(info) {
  Napi::Env env = info.Env();
  env_ = env;
  Guarded(env, [&]() {
    if (info.Length() < 1 || !info[0].IsObject()) {
      throw Napi::TypeError::New(env,
                                 "new ControlSegment(options) needs { name, slots, worldSize, resumeTimeoutMs, jobId }");
    }
    Napi::Object options = info[0].As<Napi::Object>();
    SegmentConfig config;
    config.name = RequireString(env, options.Get("name"), "options.name");
    Segment::ValidateName(config.name);  // the name first: it is what the caller will grep for
    config.slots = RequireUint32(env, options.Get("slots"), "options.slots", 1, SYMBIO_MAX_SLOTS);
    config.world_size = RequireUint32(env, options.Get("worldSize"), "options.worldSize", 1, SYMBIO_MAX_WORLD);
    config.resume_timeout_ms =
        RequireUint32(env, options.Get("resumeTimeoutMs"), "options.resumeTimeoutMs", 1, UINT32_MAX);
    config.job_id = RequireString(env, options.Get("jobId"), "options.jobId");
    segment_ = Segment::Create(config);
  });
  // Environment teardown (end of the main thread's event loop, worker
  // termination) must not leave threads running or the name in /dev/shm.
  // process.exit() skips these hooks; src/native.ts closes on 'exit'.
  cleanup_hook_registered_ = napi_add_env_cleanup_hook(env, &ControlSegment::EnvCleanup, this) == napi_ok;
}

ControlSegment::~ControlSegment() { CloseAll(); }

void ControlSegment::EnvCleanup(void* self) {
  auto* cs = static_cast<ControlSegment*>(self);
  cs->cleanup_hook_registered_ = false;  // Node removes a hook before running it
  cs->CloseAll();
}

void ControlSegment::CloseAll() noexcept {
  if (closed_) return;
  closed_ = true;
  if (watch_) {
    // Threads first (they read the mapping), then the thread-safe function:
    // abort drops events still queued for JS; they describe a segment that is
    // gone. If the environment already finalized it, it must not be touched.
    watch_->watcher->Stop();
    if (!watch_->tsfn_finalized) tsfn_.Abort();
    watch_.reset();
  }
  if (segment_) segment_->Close();
  if (cleanup_hook_registered_) {
    napi_remove_env_cleanup_hook(env_, &ControlSegment::EnvCleanup, this);
    cleanup_hook_registered_ = false;
  }
}

Segment& ControlSegment::RequireOpen(Napi::Env env, const char* what) {
  if (closed_ || !segment_ || !segment_->is_open()) {
    throw Napi::Error::New(env, std::string("cannot ") + what + ": control segment " +
                                    (segment_ ? segment_->name() : std::string("?")) + " is closed");
  }
  return *segment_;
}

Napi::Value ControlSegment::Inspect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guarded(env, [&]() -> Napi::Value {
    const HeaderInfo h = Segment::Inspect(RequireString(env, info[0], "inspect(name): name"));
    Napi::Object out = Napi::Object::New(env);
    out.Set("name", h.name);
    out.Set("abiVersion", h.abi_version);
    out.Set("slotCount", h.slot_count);
    out.Set("worldSize", h.world_size);
    out.Set("agentPid", h.agent_pid);
    out.Set("resumeTimeoutMs", h.resume_timeout_ms);
    out.Set("jobId", h.job_id);
    out.Set("epoch", h.epoch);
    out.Set("command", Segment::CommandName(h.command));
    out.Set("segmentBytes", static_cast<double>(h.segment_bytes));
    out.Set("createdNs", static_cast<double>(h.created_ns));  // ~256 ns granularity as a double: fine for display
    return out;
  });
}

Napi::Value ControlSegment::GetName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), segment_ ? segment_->name() : std::string());
}

Napi::Value ControlSegment::GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), closed_); }

Napi::Value ControlSegment::Hold(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guarded(env, [&]() -> Napi::Value {
    Segment& s = RequireOpen(env, "hold");
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      return Napi::Number::New(env, s.Hold(RequireUint32(env, info[0], "hold: epoch", 1, kEpochMask)));
    }
    return Napi::Number::New(env, s.Hold());
  });
}

Napi::Value ControlSegment::Freeze(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guarded(env, [&]() -> Napi::Value { return Napi::Number::New(env, RequireOpen(env, "freeze").Freeze()); });
}

Napi::Value ControlSegment::Resume(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guarded(env, [&]() -> Napi::Value { return Napi::Number::New(env, RequireOpen(env, "resume").Resume()); });
}

Napi::Value ControlSegment::Command(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guarded(env, [&]() -> Napi::Value {
    Segment& s = RequireOpen(env, "read the command");
    Napi::Object out = Napi::Object::New(env);
    out.Set("epoch", s.epoch());
    out.Set("command", Segment::CommandName(s.command()));
    return out;
  });
}

Napi::Value ControlSegment::SetCatchup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guarded(env, [&]() { return SetCatchupImpl(env, info); });
}

Napi::Value ControlSegment::SetCatchupImpl(Napi::Env env, const Napi::CallbackInfo& info) {
  Segment& s = RequireOpen(env, "set a catch-up table");
  const uint32_t slot = RequireUint32(env, info[0], "setCatchup: slot", 0, s.slot_count() - 1);
  const uint32_t epoch = RequireUint32(env, info[1], "setCatchup: epoch", 0, kEpochMask);
  if (!info[2].IsArray()) throw Napi::TypeError::New(env, "setCatchup: targets must be an array of { gid, target }");
  Napi::Array targets = info[2].As<Napi::Array>();
  const uint32_t count = targets.Length();
  if (count > SYMBIO_MAX_COMMS) {
    throw Napi::RangeError::New(env, "setCatchup: at most " + std::to_string(SYMBIO_MAX_COMMS) +
                                         " targets fit in a slot (got " + std::to_string(count) + ")");
  }
  std::vector<symbio_comm_pub> entries(count);
  for (uint32_t i = 0; i < count; i++) {
    const std::string what = "setCatchup: targets[" + std::to_string(i) + "]";
    Napi::Value item = targets.Get(i);
    if (!item.IsObject()) throw Napi::TypeError::New(env, what + " must be an object { gid, target }");
    Napi::Object o = item.As<Napi::Object>();
    entries[i].gid = RequireU64String(env, o.Get("gid"), what + ".gid");
    entries[i].seq = static_cast<uint64_t>(RequireInteger(env, o.Get("target"), what + ".target", 0, kMaxSafeInteger));
    for (uint32_t j = 0; j < i; j++) {
      // Two targets for one communicator: a coordinator bug the rank could
      // only resolve by guessing.
      if (entries[j].gid == entries[i].gid) {
        throw Napi::Error::New(env, what + ".gid " + std::to_string(entries[i].gid) + " repeats targets[" +
                                        std::to_string(j) + "].gid");
      }
    }
  }
  s.SetCatchup(slot, epoch, entries.data(), count);
  return env.Undefined();
}

Napi::Value ControlSegment::Snapshot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guarded(env, [&]() { return SnapshotImpl(env, info); });
}

Napi::Value ControlSegment::SnapshotImpl(Napi::Env env, const Napi::CallbackInfo& /*info*/) {
  const RawSnapshot raw = SnapshotReader::Take(RequireOpen(env, "take a snapshot"));
  // All counters in one buffer; each rank's sent/recvd are Float64Array views
  // on it (one allocation, no per-element calls across Node-API).
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, raw.counters.size() * sizeof(double));
  if (!raw.counters.empty()) std::memcpy(buffer.Data(), raw.counters.data(), raw.counters.size() * sizeof(double));
  const uint32_t world = raw.world_size;

  Napi::Array ranks = Napi::Array::New(env, raw.ranks.size());
  for (size_t k = 0; k < raw.ranks.size(); k++) {
    const RankCopy& r = raw.ranks[k];
    const symbio_slot_fixed& f = r.fixed;
    Napi::Object o = Napi::Object::New(env);
    o.Set("slot", r.slot);
    o.Set("state", r.state);
    o.Set("pid", f.pid);
    o.Set("worldRank", f.world_rank);
    o.Set("worldSize", f.world_size);
    o.Set("ackEpoch", f.ack_epoch);
    o.Set("changeSeq", r.change_seq);
    o.Set("flags", f.flags);
    o.Set("inCollective", (f.flags & SYMBIO_F_IN_COLL) != 0);
    o.Set("unsupported", r.unsupported ? Napi::Value(Napi::String::New(env, r.unsupported)) : env.Null());
    o.Set("autoresumed", (f.flags & SYMBIO_F_AUTORESUMED) != 0);
    o.Set("autoresumeReason",
          r.autoresume_reason ? Napi::Value(Napi::String::New(env, r.autoresume_reason)) : env.Null());
    o.Set("autoresumes", static_cast<double>(f.autoresumes));
    o.Set("pendingSends", f.pending_sends);
    o.Set("pendingRecvs", f.pending_recvs);
    o.Set("pendingColls", f.pending_colls);
    o.Set("drainedNow", f.drained_now);
    // u64 counters become doubles: exact up to 2^53 (decades of MPI calls).
    o.Set("drainedTotal", static_cast<double>(f.drained_total));
    o.Set("pmpiCalls", static_cast<double>(f.pmpi_calls));
    o.Set("heldNs", static_cast<double>(f.held_ns));
    o.Set("frozenNs", static_cast<double>(f.frozen_ns));
    o.Set("resumedNs", static_cast<double>(f.resumed_ns));
    Napi::Array comms = Napi::Array::New(env, r.ncomms);
    for (uint32_t c = 0; c < r.ncomms; c++) {
      Napi::Object comm = Napi::Object::New(env);
      comm.Set("gid", std::to_string(f.comms[c].gid));
      comm.Set("seq", static_cast<double>(f.comms[c].seq));
      comms.Set(c, comm);
    }
    o.Set("comms", comms);
    o.Set("sent", Napi::Float64Array::New(env, world, buffer, r.counters * sizeof(double)));
    o.Set("recvd", Napi::Float64Array::New(env, world, buffer, (r.counters + world) * sizeof(double)));
    ranks.Set(static_cast<uint32_t>(k), o);
  }
  Napi::Array problems = Napi::Array::New(env, raw.problems.size());
  for (size_t k = 0; k < raw.problems.size(); k++) problems.Set(static_cast<uint32_t>(k), raw.problems[k]);

  Napi::Object out = Napi::Object::New(env);
  out.Set("epoch", raw.epoch);
  out.Set("command", Segment::CommandName(raw.command));
  out.Set("consistent", raw.consistent);
  out.Set("takenNs", static_cast<double>(raw.taken_ns));
  out.Set("ranks", ranks);
  out.Set("problems", problems);
  return out;
}

void ControlSegment::CallJs(Napi::Env env, Napi::Function callback, WatchState* state, WatchEvent* raw) {
  std::unique_ptr<WatchEvent> event(raw);  // freed on every path, delivered or not
  // A null env: the queue is being drained at abort / environment teardown.
  if (static_cast<napi_env>(env) == nullptr || callback.IsEmpty() || !event) return;
  // Cleared before JS runs, so a change during the callback queues a new one.
  if (event->kind == WatchEvent::Kind::kChanged) state->watcher->ChangedDelivered();
  try {
    Napi::Object o = Napi::Object::New(env);
    o.Set("type", EventType(event->kind));
    switch (event->kind) {
      case WatchEvent::Kind::kRankAttached:
      case WatchEvent::Kind::kRankExit:
        o.Set("slot", event->slot);
        o.Set("pid", event->pid);
        o.Set("worldRank", event->world_rank);
        break;
      case WatchEvent::Kind::kError:
        o.Set("message", event->message);
        break;
      case WatchEvent::Kind::kChanged:
        break;
    }
    callback.Call({o});
  } catch (const Napi::Error& e) {
    // The listener threw: hand its exception back to JS (Node then applies
    // its policy for exceptions from Node-API callbacks; src/native.ts never
    // lets one get here). While a worker or the process is being torn down
    // nothing can reach JS any more and re-throwing fails too; that must not
    // escape into C (std::terminate).
    try {
      e.ThrowAsJavaScriptException();
    } catch (...) {
    }
  }
}

void ControlSegment::FinalizeTsfn(Napi::Env /*env*/, std::shared_ptr<WatchState>* keep, WatchState* state) {
  // Node-API's rule: no thread may use the function after its finalizer. At
  // environment teardown this may run before our own cleanup hook.
  state->watcher->Stop();
  state->tsfn_finalized = true;
  delete keep;
}

Napi::Value ControlSegment::Watch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guarded(env, [&]() { return WatchImpl(env, info); });
}

Napi::Value ControlSegment::WatchImpl(Napi::Env env, const Napi::CallbackInfo& info) {
  Segment& s = RequireOpen(env, "watch");
  if (watch_) {
    throw Napi::Error::New(env, "control segment " + s.name() + " is already watched (one listener per segment)");
  }
  if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "watch(listener): listener must be a function");
  auto state = std::make_shared<WatchState>();
  state->watcher = std::make_unique<Watcher>(segment_);
  auto* keep = new std::shared_ptr<WatchState>(state);
  EventTsfn tsfn;
  try {
    // Unlimited queue (0): the watcher thread must never block on JS; the
    // 'changed' coalescing keeps the queue short. One thread: the watcher's,
    // covered by this binding's reference, released in CloseAll after join.
    tsfn = EventTsfn::New(env, info[0].As<Napi::Function>(), "symbio.watch", 0, 1, state.get(),
                          &ControlSegment::FinalizeTsfn, keep);
  } catch (...) {
    delete keep;  // node-addon-api does not run the finalizer when creation fails
    throw;
  }
  try {
    state->watcher->Start([tsfn](std::unique_ptr<WatchEvent> event) -> bool {
      WatchEvent* raw = event.release();
      if (tsfn.NonBlockingCall(raw) != napi_ok) {
        delete raw;  // not queued (closing): ours to free
        return false;
      }
      return true;
    });
  } catch (...) {
    tsfn.Abort();  // its finalizer frees `keep`
    throw;
  }
  tsfn_ = tsfn;
  watch_ = state;
  return env.Undefined();
}

Napi::Value ControlSegment::Close(const Napi::CallbackInfo& info) {
  CloseAll();
  return info.Env().Undefined();
}

}  // namespace symbio
