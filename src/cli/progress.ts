/**
 * A one-line progress display for long operations, on a terminal only
 * (stderr): the operation, its phase and the time so far, redrawn in place.
 * Off a terminal it prints nothing (logs and --json carry the facts).
 */
export interface Progress {
  phase(kind: string, phase: string): void;
  done(): void;
}

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

export function progressDisplay(stream: NodeJS.WriteStream = process.stderr): Progress | null {
  if (!stream.isTTY) return null;
  const t0 = performance.now();
  let text = 'waiting for the controller';
  let frame = 0;
  const draw = (): void => {
    const s = ((performance.now() - t0) / 1000).toFixed(1);
    stream.write(`\r\x1b[2K${FRAMES[frame++ % FRAMES.length]} ${text} (${s} s)`);
  };
  const timer = setInterval(draw, 100);
  draw();
  return {
    phase(kind, phase) {
      text = `${kind}: ${phase}`;
      draw();
    },
    done() {
      clearInterval(timer);
      stream.write('\r\x1b[2K');
    },
  };
}
