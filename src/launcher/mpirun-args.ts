/**
 * Reading and extending an Open MPI mpirun command line without changing its
 * meaning: symbio's own options are taken out, the shim and the segment are
 * added with `-x`, everything else passes through unchanged.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** mpirun options (Open MPI 4.1) that take one value; used to find the program. */
const WITH_VALUE = new Set([
  '-np', '--np', '-n', '-c', '-H', '--host', '-host', '-hostfile', '--hostfile', '-machinefile',
  '--machinefile', '--default-hostfile', '-x', '--map-by', '-map-by', '--rank-by', '-rank-by',
  '--bind-to', '-bind-to', '-wdir', '--wdir', '-wd', '--wd', '--prefix', '-prefix', '-npernode',
  '--npernode', '-npersocket', '--npersocket', '--output-filename', '-output-filename',
  '--report-bindings-file', '-cpus-per-proc', '--cpus-per-proc', '-cpus-per-rank',
  '--cpus-per-rank', '--cpu-set', '-cpu-set', '--path', '-path', '--preload-files', '-s',
  '--tmpdir', '--ompi-server', '--timeout', '-timeout', '--app', '-tune', '--tune',
  '--stdin', '-stdin', '-am', '--am', '--personality', '--launch-agent', '--xml-file',
  '--report-uri', '--report-pid', '-N', '--max-restarts',
]);
/** Options that take two values (`--mca name value`). */
const WITH_TWO = new Set(['-mca', '--mca', '-gmca', '--gmca']);

export interface SymbioRunOptions {
  chaosQuiesceMs?: number;
  chaosReport?: string;
  jobId?: string;
  resumeTimeoutMs?: number;
  json?: boolean;
  /** A standalone controller to attach to (socket path or tcp://host:port) instead of an embedded one. */
  controller?: string;
  /** symbio.yaml to use instead of the search order. */
  config?: string;
  /** Run the job in the VMs of this local virtual cluster. */
  vcluster?: string;
  /** Only these VMs of the cluster (default: all). */
  vms?: string[];
}

export interface ParsedMpirun {
  /** mpirun's arguments with symbio's own options removed. */
  readonly args: string[];
  readonly symbio: SymbioRunOptions;
  /** -np / -n / -c value, when given. */
  readonly np: number | null;
  /** The application (first non-option argument), when found. */
  readonly program: string | null;
  readonly programIndex: number;
}

export class UsageError extends Error {
  override name = 'UsageError';
}

function positiveInt(opt: string, v: string | undefined): number {
  const n = Number(v);
  if (v === undefined || !Number.isInteger(n) || n <= 0) {
    throw new UsageError(`${opt} needs a positive integer, got ${v === undefined ? 'nothing' : `'${v}'`}`);
  }
  return n;
}

/** symbio's own options, accepted anywhere before the program. */
const SYMBIO_OPTS: Record<string, (o: SymbioRunOptions, v: string | undefined) => void> = {
  '--chaos-quiesce': (o, v) => (o.chaosQuiesceMs = positiveInt('--chaos-quiesce', v)),
  '--chaos-report': (o, v) => {
    if (!v) throw new UsageError('--chaos-report needs a file path');
    o.chaosReport = v;
  },
  '--job-id': (o, v) => {
    if (!v || !/^[A-Za-z0-9_.-]{1,48}$/.test(v)) {
      throw new UsageError('--job-id needs 1-48 characters from A-Z a-z 0-9 _ . -');
    }
    o.jobId = v;
  },
  '--resume-timeout': (o, v) => (o.resumeTimeoutMs = positiveInt('--resume-timeout', v)),
  '--symbio-controller': (o, v) => {
    if (!v) throw new UsageError('--symbio-controller needs a socket path or tcp://host:port');
    o.controller = v;
  },
  '--vcluster': (o, v) => {
    if (!v || !/^[A-Za-z0-9_.-]{1,32}$/.test(v)) throw new UsageError('--vcluster needs the name of a virtual cluster (symbio vcluster up --name NAME)');
    o.vcluster = v;
  },
  '--vms': (o, v) => {
    const list = (v ?? '').split(',').filter(Boolean);
    if (list.length === 0) throw new UsageError('--vms needs a comma-separated list of VM names (vm0,vm1)');
    o.vms = list;
  },
  '--symbio-config': (o, v) => {
    if (!v) throw new UsageError('--symbio-config needs a file path');
    o.config = v;
  },
};

export function parseMpirunArgs(argv: readonly string[]): ParsedMpirun {
  const args: string[] = [];
  const symbio: SymbioRunOptions = {};
  let np: number | null = null;
  let program: string | null = null;
  let programIndex = -1;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (program === null) {
      const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
      const own = SYMBIO_OPTS[flag];
      if (own) {
        own(symbio, inline ?? argv[++i]);
        continue;
      }
      if (a === '--symbio-json') {
        symbio.json = true;
        continue;
      }
      if (WITH_TWO.has(a)) {
        args.push(a, argv[i + 1] ?? '', argv[i + 2] ?? '');
        i += 2;
        continue;
      }
      if (WITH_VALUE.has(flag)) {
        const v = inline ?? argv[i + 1];
        if (['-np', '--np', '-n', '-c'].includes(flag)) np = positiveInt(flag, v);
        if (inline !== undefined) args.push(a);
        else {
          args.push(a, v ?? '');
          i++;
        }
        continue;
      }
      if (!a.startsWith('-')) {
        program = a;
        programIndex = args.length;
      }
    }
    args.push(a);
  }
  return { args, symbio, np, program, programIndex };
}

/** Resolve a program the way execvp would; null when it cannot be run. */
export function findExecutable(name: string, path = process.env.PATH ?? ''): string | null {
  const candidates = name.includes('/') ? [name] : path.split(delimiter).filter(Boolean).map((d) => join(d, name));
  for (const c of candidates) {
    try {
      if (statSync(c).isFile()) {
        accessSync(c, constants.X_OK);
        return c;
      }
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * The command line mpirun gets: the shim preloaded into every rank (merged
 * with an LD_PRELOAD the user exports), the segment name, the user's args.
 */
export function withShim(args: readonly string[], shimPath: string, segmentName: string): string[] {
  const out = [...args];
  let merged = false;
  for (let i = 0; i < out.length - 1; i++) {
    if (out[i] === '-x' && out[i + 1]!.startsWith('LD_PRELOAD=')) {
      out[i + 1] = `LD_PRELOAD=${shimPath}:${out[i + 1]!.slice('LD_PRELOAD='.length)}`;
      merged = true;
    }
  }
  const pre = merged ? [] : ['-x', `LD_PRELOAD=${shimPath}`];
  return [...pre, '-x', `SYMBIO_SEGMENT=${segmentName}`, ...out];
}
