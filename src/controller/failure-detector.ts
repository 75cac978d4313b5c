/**
 * Notices when the machine under a VM job fails: a VM's QEMU is gone, its
 * QMP monitor no longer answers (a hung hypervisor), or its agent has been
 * silent too long while QEMU says the guest runs (a hung or crashed guest).
 * Each becomes one FailureEvent per incident: a VM that stays dead is not
 * reported again until it has come back (another QEMU, its agent heard).
 *
 * The detector is cheap when all is well: a kill(pid, 0) per VM and a look
 * at the agent link's last heartbeat, every `pollMs`; QMP is asked only
 * once the agent has been silent for `agentLostMs`. While an operation that
 * stops, moves or replaces VMs is under way (`busy()`), silence and exits
 * are expected and nothing is judged; the silence clock restarts after it.
 * A link that drops and comes back within `agentLostMs` (flapping) is not a
 * failure.
 */
import type { FailureEvent } from '../host/plugin-api.js';
import type { Logger } from '../log.js';

export interface WatchedVm {
  readonly id: string;
  /** Where it runs (slot, host): what a failure of it takes down. */
  readonly host: string;
  /** Its QEMU's pid now (changes when it moves or restarts). */
  readonly pid: number;
}

export interface VmProbe {
  /** The job's VMs as they are placed now. */
  vms(): WatchedVm[];
  alive(pid: number): boolean;
  /** QEMU's run state ('running', 'paused', 'guest-panicked', ...); rejects when QMP does not answer in time. */
  qmpStatus(vm: string, timeoutMs: number): Promise<string>;
}

/** What the detector reads of a VM's agent link (GuestAgentLink has it). */
export interface AgentSignal {
  readonly connected: boolean;
  readonly lastHeartbeat: { readonly receivedAt: number } | null;
}

export interface FailureDetectorOptions {
  readonly job: string;
  readonly probe: VmProbe;
  readonly links: ReadonlyMap<string, AgentSignal>;
  /** True while an operation that stops, moves or replaces VMs runs. */
  readonly busy: () => boolean;
  readonly onFailure: (f: FailureEvent) => void;
  readonly log: Logger;
  readonly pollMs?: number;
  /** Agent silence (no heartbeat, no connection) after which QEMU is asked, ms. */
  readonly agentLostMs?: number;
  readonly qmpTimeoutMs?: number;
  readonly now?: () => number;
}

/** QEMU run states in which a silent guest is expected (someone stopped it on purpose). */
const STOPPED_ON_PURPOSE = new Set(['paused', 'inmigrate', 'postmigrate', 'prelaunch', 'finish-migrate', 'save-vm', 'restore-vm', 'suspended', 'colo']);

interface Incident {
  readonly kind: FailureEvent['kind'];
  readonly pid: number;
  readonly at: number;
  readonly event: FailureEvent;
}

export class FailureDetector {
  readonly #o: FailureDetectorOptions;
  readonly #pollMs: number;
  readonly #agentLostMs: number;
  readonly #now: () => number;
  readonly #incidents = new Map<string, Incident>();
  /** Last time each VM's agent was known alive (heartbeat or connection), or the end of the last busy spell. */
  readonly #lastSeen = new Map<string, number>();
  #timer: NodeJS.Timeout | null = null;
  #ticking = false;

  constructor(o: FailureDetectorOptions) {
    this.#o = o;
    this.#pollMs = o.pollMs ?? 250;
    this.#agentLostMs = o.agentLostMs ?? 6_000;
    this.#now = o.now ?? Date.now;
  }

  start(): void {
    const t = this.#now();
    for (const vm of this.#o.links.keys()) this.#lastSeen.set(vm, t);
    this.#timer ??= setInterval(() => void this.tick(), this.#pollMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** VMs with an open incident (failed and not back yet). */
  get failed(): ReadonlyMap<string, Incident> {
    return this.#incidents;
  }

  /** One look at every VM (the timer calls it; tests too). Overlapping calls are skipped. */
  async tick(): Promise<void> {
    if (this.#ticking) return;
    this.#ticking = true;
    try {
      await this.#look();
    } catch (err) {
      this.#o.log.warn({ err: (err as Error).message }, 'failure detection could not look at the VMs');
    } finally {
      this.#ticking = false;
    }
  }

  async #look(): Promise<void> {
    const now = this.#now();
    if (this.#o.busy()) {
      // silence during an operation proves nothing; the clock starts again after it
      for (const vm of this.#o.links.keys()) this.#lastSeen.set(vm, now);
      return;
    }
    for (const vm of this.#o.probe.vms()) {
      const link = this.#o.links.get(vm.id);
      // a connection alone proves nothing: QEMU holds the socket of a hung guest open
      const heard = Math.max(this.#lastSeen.get(vm.id) ?? now, link?.lastHeartbeat?.receivedAt ?? 0);
      this.#lastSeen.set(vm.id, heard);
      const open = this.#incidents.get(vm.id);
      if (open) {
        // back: another QEMU that runs and whose agent is heard again
        if (vm.pid !== open.pid && this.#o.probe.alive(vm.pid) && link?.connected) {
          this.#incidents.delete(vm.id);
          this.#o.log.info({ vm: vm.id, host: vm.host, was: open.kind }, 'VM is back');
        }
        continue;
      }
      if (!this.#o.probe.alive(vm.pid)) {
        this.#report(vm, 'qemu-gone', `${vm.id}'s QEMU (pid ${vm.pid}) on ${vm.host} is gone`);
        continue;
      }
      const silentMs = now - heard;
      if (silentMs <= this.#agentLostMs) continue;
      let status: string;
      try {
        status = await this.#o.probe.qmpStatus(vm.id, this.#o.qmpTimeoutMs ?? 3_000);
      } catch (err) {
        // QEMU may have died while we asked
        if (!this.#o.probe.alive(vm.pid)) this.#report(vm, 'qemu-gone', `${vm.id}'s QEMU (pid ${vm.pid}) on ${vm.host} is gone`);
        else this.#report(vm, 'qmp-dead', `${vm.id}'s QEMU (pid ${vm.pid}) on ${vm.host} runs but its QMP monitor does not answer (${(err as Error).message}); its agent has been silent ${Math.round(silentMs)} ms`);
        continue;
      }
      if (STOPPED_ON_PURPOSE.has(status) || this.#o.busy()) {
        this.#lastSeen.set(vm.id, this.#now());
        continue;
      }
      this.#report(vm, 'agent-lost', `${vm.id}'s agent has been silent for ${Math.round(silentMs)} ms while its QEMU on ${vm.host} says '${status}' (guest hung or crashed)`);
    }
  }

  #report(vm: WatchedVm, kind: FailureEvent['kind'], message: string): void {
    const at = this.#now();
    const event: FailureEvent = { kind, job: this.#o.job, vm: vm.id, host: vm.host, message, at };
    this.#incidents.set(vm.id, { kind, pid: vm.pid, at, event });
    this.#o.log.error({ vm: vm.id, host: vm.host, kind }, message);
    this.#o.onFailure(event);
  }
}
