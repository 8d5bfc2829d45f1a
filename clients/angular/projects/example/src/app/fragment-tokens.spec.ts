import { FragmentTokens } from './fragment-tokens';

describe('FragmentTokens', () => {
  afterEach(() => vi.unstubAllGlobals());

  function serveTokens(...bodies: string[]): string[] {
    const asked: string[] = [];
    vi.stubGlobal('fetch', async (url: string) => {
      asked.push(url);
      return new Response(bodies.shift() ?? '', { status: 200 });
    });
    return asked;
  }

  it('uses the fragment token first, then fetches a fresh one from tokenUrl each time', async () => {
    const asked = serveTokens('fresh-1', '{"token":"fresh-2"}');
    const tokens = new FragmentTokens({ server: 'ws://x/ws', negocio: 'n', token: 'first', tokenUrl: 'http://x/token' });
    expect(await tokens.next()).toBe('first');
    expect(await tokens.next()).toBe('fresh-1');
    expect(await tokens.next()).toBe('fresh-2');
    expect(asked).toEqual(['http://x/token', 'http://x/token']);
  });

  it('keeps the fragment token when there is no tokenUrl', async () => {
    const asked = serveTokens();
    const tokens = new FragmentTokens({ server: 'ws://x/ws', negocio: 'n', token: 'only' });
    expect(await tokens.next()).toBe('only');
    expect(await tokens.next()).toBe('only');
    expect(asked).toEqual([]);
  });

  it('fails clearly when tokenUrl answers an error', async () => {
    vi.stubGlobal('fetch', async () => new Response('no', { status: 401 }));
    const tokens = new FragmentTokens({ server: 'ws://x/ws', negocio: 'n', tokenUrl: 'http://x/token' });
    await expect(tokens.next()).rejects.toThrow('tokenUrl answered 401');
  });
});
