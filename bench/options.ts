/**
 * What the benchmarks share for their command lines and progress: options as
 * `--flag value` or `--flag=value` with clear errors, and timestamped
 * progress lines on stderr (stdout is the JSON).
 */
export interface OptionReader {
  readonly flag: string;
  /** The option's value (inline or the next argument). */
  value(): string;
  /** `v` as an integer >= min, or an error naming the flag. */
  int(v: string, min: number): number;
}

/** Call `each` for every option; it returns false for one it does not know. */
export function forEachOption(args: readonly string[], usage: string, each: (o: OptionReader) => boolean): void {
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i]!.split('=', 2) as [string, string | undefined];
    const reader: OptionReader = {
      flag,
      value: () => {
        const v = inline ?? args[++i];
        if (v === undefined) throw new Error(`${flag} needs a value; ${usage}`);
        return v;
      },
      int: (v, min) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < min) throw new Error(`${flag}: '${v}' is not an integer >= ${min}; ${usage}`);
        return n;
      },
    };
    if (!each(reader)) throw new Error(`unknown option ${flag}; ${usage}`);
  }
}

/** `say(msg)`: a progress line with the seconds since the benchmark began. */
export function progress(name: string): (msg: string) => void {
  const t0 = performance.now();
  return (msg) => process.stderr.write(`bench ${name} [${((performance.now() - t0) / 1000).toFixed(0).padStart(4)} s]: ${msg}\n`);
}
