/** Connecting to a Unix socket that a process we started may not have made yet. */
import { createConnection, type Socket } from 'node:net';

/** One attempt: the connected socket, or the error (ENOENT: not there yet; ECONNREFUSED: not listening yet). */
export function connectOnce(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    const onError = (err: Error) => {
      s.destroy();
      reject(err);
    };
    s.once('error', onError);
    s.once('connect', () => {
      s.off('error', onError);
      resolve(s);
    });
  });
}

/** Codes that mean "the server is still starting": worth another attempt. */
export const NOT_YET_LISTENING = new Set(['ENOENT', 'ECONNREFUSED']);
