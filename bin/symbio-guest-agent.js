#!/usr/bin/env node
// The in-guest agent (one per VM): started by the guest image's init.
import { existsSync } from 'node:fs';

const entry = new URL('../dist/src/agent/guest-main.js', import.meta.url);
if (!existsSync(entry)) {
  console.error('symbio-guest-agent: symbio is not built (no dist/)');
  process.exit(2);
}
const { guestAgentMain } = await import(entry.href);
await guestAgentMain();
