import { readSettings, websocketUrl } from './settings';

describe('readSettings', () => {
  it('reads server, token and negocio from the fragment, encoded or not', () => {
    expect(readSettings('#server=ws://127.0.0.1:8080/ws&token=a.b.c&negocio=negocio_123')).toEqual({
      ok: true,
      settings: { server: 'ws://127.0.0.1:8080/ws', token: 'a.b.c', negocio: 'negocio_123', tokenUrl: undefined },
    });
    const encoded = new URLSearchParams({
      server: 'wss://rt.example.com/ws',
      negocio: 'n 1',
      tokenUrl: 'https://app.example.com/token?negocio=n1&ttl=60',
    });
    expect(readSettings(`#${encoded}`)).toEqual({
      ok: true,
      settings: {
        server: 'wss://rt.example.com/ws',
        negocio: 'n 1',
        token: undefined,
        tokenUrl: 'https://app.example.com/token?negocio=n1&ttl=60',
      },
    });
  });

  it('says what is missing or wrong', () => {
    expect(readSettings('')).toEqual({
      ok: false,
      problems: [
        'server: missing (the WebSocket URL, ws://host:8080/ws)',
        'negocio: missing (the negocio id to watch)',
        'token: missing (a JWT, or tokenUrl to fetch one from)',
      ],
    });
    expect(readSettings('#server=ftp://x&token=t&negocio=n')).toEqual({
      ok: false,
      problems: ['server: "ftp://x" is not a ws://, wss://, http:// or https:// URL'],
    });
  });
});

describe('websocketUrl', () => {
  it('turns the server address into its /ws WebSocket URL', () => {
    expect(websocketUrl('http://127.0.0.1:8080')).toBe('ws://127.0.0.1:8080/ws');
    expect(websocketUrl('https://rt.example.com/')).toBe('wss://rt.example.com/ws');
    expect(websocketUrl('ws://127.0.0.1:8080/ws')).toBe('ws://127.0.0.1:8080/ws');
    expect(websocketUrl('not a url')).toBeUndefined();
  });
});
