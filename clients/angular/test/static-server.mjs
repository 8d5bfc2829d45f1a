// Serves the built example (dist/example/browser) as static files, the way any web server would,
// and a token endpoint for the refresh test: GET /token?negocio=<id>&ttl=<seconds> mints a token
// for that negocio with the server's secret (what an app's auth backend does).
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * Starts the server on a free loopback port. `mint(claims, ttlSeconds)` signs tokens.
 * Resolves to { url, tokenRequests(), close() }.
 */
export async function startStaticServer(root, mint) {
  let tokenRequests = 0;
  const server = createServer(async (request, response) => {
    const url = new URL(request.url ?? '/', 'http://localhost');
    if (url.pathname === '/token') {
      tokenRequests += 1;
      const negocio = url.searchParams.get('negocio') ?? '';
      const ttl = Number(url.searchParams.get('ttl') ?? '60');
      response.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
      response.end(mint({ sub: `angular-${negocio}`, negocio_id: negocio }, ttl));
      return;
    }
    await sendFile(root, url.pathname, response);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    tokenRequests: () => tokenRequests,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

async function sendFile(root, pathname, response) {
  const relative = pathname === '/' ? 'index.html' : decodeURIComponent(pathname).replace(/^\/+/, '');
  const file = path.resolve(root, relative);
  if (!file.startsWith(path.resolve(root) + path.sep)) {
    response.writeHead(403).end();
    return;
  }
  try {
    const body = await readFile(file);
    response.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    response.end(body);
  } catch {
    response.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
  }
}
