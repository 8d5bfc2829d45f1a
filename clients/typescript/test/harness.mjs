// Test harness: a real citas-realtime server on a real PostgreSQL (the binary's `demo` command
// starts a private cluster, installs the SQL and serves it), SQL writes through psql, tokens
// signed with the demo's secret, and a TCP proxy the tests can cut to drop connections.
import { spawn, execFile } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.CITAS_REALTIME_BIN ?? path.resolve(here, '../../../target/debug/citas-realtime');
const START_TIMEOUT_MS = 90_000;
export const DEADLINE_MS = 15_000;

/** Waits until `check()` is truthy, polling; fails with `what` after the deadline. */
export async function waitFor(check, what, timeoutMs = DEADLINE_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** An HS256 JWT, as the app's auth provider would issue. */
export function mintToken(secret, claims, ttlSeconds = 3600) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ iat: now, exp: now + ttlSeconds, ...claims })}`;
  const signature = createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${signature}`;
}

/**
 * Starts `citas-realtime demo` on a free port. Resolves to { addr, wsUrl, databaseUrl, secret,
 * token(claims, ttl), sql(statement), stop() }.
 */
export async function startServer() {
  const secret = randomBytes(32).toString('hex');
  const child = spawn(BIN, ['demo', '--bind-addr', '127.0.0.1:0'], {
    env: { ...process.env, JWT_SECRET: secret, RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`citas-realtime demo did not start within ${START_TIMEOUT_MS} ms:\n${output}`)),
      START_TIMEOUT_MS,
    );
    const onData = (chunk) => {
      output += chunk;
      const database = output.match(/database:\s+(\S+)/);
      const health = output.match(/health:\s+http:\/\/(\S+)\/health/);
      if (database && health && output.includes('Ctrl-C stops')) {
        clearTimeout(timer);
        resolve({ databaseUrl: database[1], addr: health[1] });
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.stderr.setEncoding('utf8').on('data', (chunk) => (output += chunk));
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${BIN} (build it first: cargo build): ${error.message}`));
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`citas-realtime demo exited with ${code} before it was up:\n${output}`));
    });
  });
  const { databaseUrl, addr } = await ready;
  const run = promisify(execFile);
  return {
    addr,
    wsUrl: `ws://${addr}/ws`,
    httpUrl: `http://${addr}`,
    databaseUrl,
    secret,
    token: (claims, ttlSeconds) => mintToken(secret, claims, ttlSeconds),
    /** Runs SQL as any writer would; returns psql's unaligned output. */
    async sql(statement) {
      const { stdout } = await run('psql', [databaseUrl, '-v', 'ON_ERROR_STOP=1', '-qAtc', statement]);
      return stdout.trim();
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.on('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A TCP proxy in front of `target` ("host:port"); `cut()` drops every connection and refuses new
 * ones, `restore()` accepts again on the same port. */
export async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const sockets = new Set();
  const onConnection = (client) => {
    const upstream = net.connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  };
  let server = net.createServer(onConnection);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxyPort = server.address().port;
  return {
    addr: `127.0.0.1:${proxyPort}`,
    async cut() {
      await new Promise((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    },
    async restore() {
      server = net.createServer(onConnection);
      await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(proxyPort, '127.0.0.1', resolve);
      });
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
