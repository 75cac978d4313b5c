/**
 * The configuration file's schema (zod 4) with its defaults. Every object is
 * strict, so a misspelt key is an error instead of a silently ignored
 * setting. Each check carries an "expected ..." message: the loader adds
 * the file, the key path, the line:column and what was found (see load.ts).
 * Paths that default to the runtime or state directory are left undefined
 * here: the caller knows those directories, the schema does not.
 */
import { z } from 'zod';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** How a limit reads in a message: 3600000 -> "3600000 ms (1 h)". */
function msText(ms: number): string {
  if (ms % HOUR === 0) return `${ms} ms (${ms / HOUR} h)`;
  if (ms % MINUTE === 0) return `${ms} ms (${ms / MINUTE} min)`;
  if (ms % 1000 === 0) return `${ms} ms (${ms / 1000} s)`;
  return `${ms} ms`;
}

/** A duration in whole milliseconds, min..max, with a default. */
function durationMs(description: string, def: number, max: number, min = 1) {
  const expected = min === 1 ? 'expected a positive integer (ms)' : `expected an integer of at least ${min} (ms)`;
  return z
    .number({ error: expected })
    .int({ error: expected })
    .min(min, { error: expected })
    .max(max, { error: `expected at most ${msText(max)}` })
    .default(def)
    .describe(`${description} (ms, ${min}..${max}; default ${def})`);
}

function count(description: string, def: number, max: number) {
  const expected = 'expected an integer of at least 1';
  return z
    .number({ error: expected })
    .int({ error: expected })
    .min(1, { error: expected })
    .max(max, { error: `expected at most ${max}` })
    .default(def)
    .describe(`${description} (1..${max}; default ${def})`);
}

function pathString(description: string) {
  const expected = 'expected a non-empty path';
  return z.string({ error: expected }).min(1, { error: expected }).describe(description);
}

const FAILURE_POLICY_EXPECTED = "expected 'abort', 'continue' or { disableAfter: N }";

/** Same values as the plugin API's FailurePolicy. */
export const failurePolicySchema = z
  .union(
    [
      z.enum(['abort', 'continue'], { error: FAILURE_POLICY_EXPECTED }),
      z.strictObject(
        {
          disableAfter: z
            .number({ error: 'expected an integer of at least 1' })
            .int({ error: 'expected an integer of at least 1' })
            .min(1, { error: 'expected an integer of at least 1' })
            .describe('Disable the plugin after this many failed hook calls'),
        },
        { error: FAILURE_POLICY_EXPECTED },
      ),
    ],
    { error: FAILURE_POLICY_EXPECTED },
  )
  .describe("What happens when one of the plugin's hooks fails: abort (the error propagates), continue (logged), or { disableAfter: N }");

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const tcpSchema = z
  .strictObject(
    {
      host: z
        .string({ error: 'expected a host name or address' })
        .min(1, { error: 'expected a host name or address' })
        .default('127.0.0.1')
        .describe('Address to listen on (default 127.0.0.1)'),
      port: z
        .number({ error: 'expected a port number (1..65535)' })
        .int({ error: 'expected a port number (1..65535)' })
        .min(1, { error: 'expected a port number (1..65535)' })
        .max(65535, { error: 'expected a port number (1..65535)' })
        .default(7450)
        .describe('TCP port (default 7450)'),
    },
    { error: 'expected a mapping (host:, port:)' },
  )
  .describe('Listen on TCP too, for agents and clients on other hosts; needs controller.tokenFile');

const controllerSchema = z
  .strictObject(
    {
      socket: pathString("The standalone controller's Unix socket (default: <runtime dir>/controller.sock)").optional(),
      tcp: tcpSchema.optional(),
      tokenFile: pathString('File holding the shared token TCP agents and clients present (mode 0600); required with tcp').optional(),
      stateDir: pathString('Where job journals are kept (default: the state directory)').optional(),
      whenBusy: z
        .enum(['queue', 'refuse'], { error: "expected 'queue' or 'refuse'" })
        .default('queue')
        .describe('What a second operation on a busy job does: wait its turn (queue) or fail at once (refuse)'),
      queueLimit: count('Operations that may wait behind a busy job', 4, 1000),
    },
    { error: 'expected a mapping (socket:, tcp:, ...)' },
  )
  // Listening on TCP without a token would let anyone on the network drive jobs.
  .superRefine((c, ctx) => {
    if (c.tcp && c.tokenFile === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['tokenFile'],
        message: 'required when controller.tcp is set (TCP agents and clients must present the shared token); add tokenFile: <path to a 0600 file>',
      });
    }
  });

const quiesceSchema = z
  .strictObject(
    {
      timeoutMs: durationMs('How long ranks get to reach a quiescent point', 30_000, HOUR),
      stallMs: durationMs('How long without progress counts as stalled', 2_000, 10 * MINUTE),
      resumeTimeoutMs: durationMs('Ranks resume by themselves after being held this long', 60_000, DAY),
    },
    { error: 'expected a mapping (timeoutMs:, stallMs:, resumeTimeoutMs:)' },
  );

const hooksSchema = z
  .strictObject(
    {
      timeoutMs: durationMs('Default limit for one plugin hook call', 5_000, 10 * MINUTE),
    },
    { error: 'expected a mapping (timeoutMs:)' },
  );

const pluginEntrySchema = z
  .strictObject(
    {
      use: z
        .string({ error: 'expected a package name or a path (./x.js)' })
        .min(1, { error: 'expected a package name or a path (./x.js)' })
        .describe("Package name (resolved from the config file's directory) or path (./, ../ or /; relative to the config file)"),
      options: z.unknown().optional().describe("The plugin's options, checked against its own configSchema when it loads"),
      failurePolicy: failurePolicySchema.optional(),
      intervalMs: durationMs("Health monitors' sampling period", 10_000, DAY, 100),
      enabled: z.boolean({ error: 'expected true or false' }).default(true).describe('false: keep the entry but do not load it'),
    },
    { error: 'expected a mapping with use: <package or path>' },
  )
  .describe('One plugin');

const hostSchema = z
  .strictObject(
    {
      name: z
        .string({ error: 'expected a host name' })
        .min(1, { error: 'expected a host name' })
        .describe('Host name, unique'),
      spare: z.boolean({ error: 'expected true or false' }).default(false).describe('Kept free to receive migrated or restarted VMs'),
      address: z
        .string({ error: 'expected an address' })
        .min(1, { error: 'expected an address' })
        .optional()
        .describe('How to reach the host, when not by its name'),
    },
    { error: 'expected a mapping with name:' },
  )
  .describe('One host');

const hostsSchema = z
  .array(hostSchema, { error: 'expected a list of hosts (- name: h1)' })
  // Hosts are referred to by name (decisions, spares): two with one name is ambiguous.
  .superRefine((hosts, ctx) => {
    const first = new Map<string, number>();
    hosts.forEach((h, i) => {
      const prev = first.get(h.name);
      if (prev === undefined) first.set(h.name, i);
      else ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate host name "${h.name}" (already used by hosts[${prev}])` });
    });
  })
  .default([])
  .describe('The cluster');

const checkpointSchema = z
  .strictObject(
    {
      dir: pathString('Where checkpoints are written').optional(),
      keep: count('How many checkpoints per job to keep', 3, 1000),
    },
    { error: 'expected a mapping (dir:, keep:)' },
  );

const logSchema = z
  .strictObject(
    {
      level: z
        .enum(LOG_LEVELS, { error: `expected one of ${LOG_LEVELS.join(', ')}` })
        .default('info')
        .describe(`Log level: ${LOG_LEVELS.join(', ')} (default info)`),
    },
    { error: 'expected a mapping (level:)' },
  );

/**
 * A section of the file. `prefault({})` (not `default`) so an absent section
 * is parsed as an empty one and gets its fields' defaults; the description
 * goes on the outer schema, where it can be read.
 */
function section<S extends z.ZodObject>(schema: S, description: string) {
  return schema.prefault({} as z.input<S>).describe(description);
}

/** The whole file. */
export const configSchema = z
  .strictObject(
    {
      controller: section(controllerSchema, 'The standalone controller'),
      quiesce: section(quiesceSchema, 'Bringing MPI to a quiescent point'),
      hooks: section(hooksSchema, 'Plugin hooks'),
      plugins: z
        .array(pluginEntrySchema, { error: 'expected a list of plugins (- use: <package or path>)' })
        .default([])
        .describe('Plugins, in order; they load only from these entries'),
      hosts: hostsSchema,
      checkpoint: section(checkpointSchema, 'Checkpoints'),
      log: section(logSchema, 'Logging'),
    },
    { error: 'expected a mapping of sections (controller:, quiesce:, hooks:, plugins:, hosts:, checkpoint:, log:)' },
  )
  .describe('symbio configuration');

export type SymbioConfig = z.output<typeof configSchema>;
/** What may be written in the file (everything optional). */
export type SymbioConfigInput = z.input<typeof configSchema>;
export type PluginEntry = SymbioConfig['plugins'][number];
export type HostEntry = SymbioConfig['hosts'][number];

/** The configuration used when there is no file. */
export function defaultConfig(): SymbioConfig {
  return configSchema.parse({});
}
