import { DashboardSettings } from './settings';

/**
 * The example's tokens: the fragment's `token` for the first connection; then, when the fragment
 * names a `tokenUrl`, a fresh one fetched from it for every reconnection and every refresh before
 * expiry (what an app's auth service does with its refresh token). Without `tokenUrl`, the
 * fragment's token is all there is.
 */
export class FragmentTokens {
  private unused?: string;

  constructor(private readonly settings: DashboardSettings) {
    this.unused = settings.token;
  }

  /** The token to use now. */
  next(): string | Promise<string> {
    const { tokenUrl, token } = this.settings;
    if (!tokenUrl) return token ?? '';
    const first = this.unused;
    this.unused = undefined;
    return first ?? fetchToken(tokenUrl);
  }
}

/** GETs a token: the body is the token, or JSON with `token` (or `access_token`). */
export async function fetchToken(url: string): Promise<string> {
  const response = await fetch(url, { cache: 'no-store' });
  if (!response.ok) throw new Error(`tokenUrl answered ${response.status}`);
  const body = (await response.text()).trim();
  if (!body.startsWith('{')) return body;
  const parsed = JSON.parse(body) as { token?: unknown; access_token?: unknown };
  const token = parsed.token ?? parsed.access_token;
  if (typeof token !== 'string') throw new Error('tokenUrl answered JSON without "token"');
  return token;
}
