// Makes sure the TypeScript client (clients/typescript, installed here as the local package
// @citas-realtime/client) has a compiled dist/ that matches its source, using that package's own
// toolchain: `npm ci` there when its TypeScript compiler is missing, then `tsc -p tsconfig.json`
// (its build without the dashboard bundle, so nothing outside its dist/ is written).
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const client = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../typescript');
const source = path.join(client, 'src/index.ts');
const built = path.join(client, 'dist/index.js');
const tsc = path.join(client, 'node_modules/.bin/tsc');

function isFresh() {
  return existsSync(built) && statSync(built).mtimeMs >= statSync(source).mtimeMs;
}

function run(command, args) {
  console.log(`ensure-client: ${command} ${args.join(' ')} (in ${client})`);
  execFileSync(command, args, { cwd: client, stdio: 'inherit' });
}

if (isFresh()) {
  console.log('ensure-client: @citas-realtime/client is built');
} else {
  if (!existsSync(tsc)) run('npm', ['ci', '--no-audit', '--no-fund']);
  run(tsc, ['-p', 'tsconfig.json']);
}
