//! The generator's WebSocket clients: each connects from its own source address, subscribes to
//! one negocio, and counts what arrives and how late, against the shared [`Clock`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::{index_of, Args, Clock, SECRET};

/// What one client counted.
#[derive(Default)]
pub(crate) struct ClientResult {
    pub(crate) received: u64,
    /// Statistics snapshots received (`--stats`).
    pub(crate) snapshots: u64,
    pub(crate) duplicates: u64,
    pub(crate) last_arrival_us: u64,
    /// (write index, latency µs)
    pub(crate) samples: Vec<(u64, u64)>,
}

/// Every client, connected and subscribed.
pub(crate) struct Clients {
    handles: Vec<JoinHandle<ClientResult>>,
    /// Events each client has received so far.
    counters: Vec<Arc<AtomicU64>>,
    stop: CancellationToken,
    pub(crate) connect_secs: f64,
}

/// Opens `--clients` clients, spread over the negocios and the source addresses, and waits
/// until every one is subscribed.
pub(crate) async fn connect_all(
    args: &Args,
    server: SocketAddr,
    clock: &Arc<Clock>,
) -> anyhow::Result<Clients> {
    let started = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(args.clients.max(1));
    let stop = CancellationToken::new();
    let counters: Vec<Arc<AtomicU64>> = (0..args.clients).map(|_| Arc::default()).collect();
    let mut handles = Vec::with_capacity(args.clients);
    for (i, counter) in counters.iter().enumerate() {
        let last_octet = 1 + (i % args.source_addrs as usize) as u8;
        let spec = ClientSpec {
            server,
            source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)),
            negocio: format!("n{}", i % args.negocios),
            sub: format!("loadgen-{i}"),
            stats: args.stats,
        };
        let (clock, ready, stop) = (clock.clone(), ready_tx.clone(), stop.clone());
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            client(spec, clock, ready, stop, counter).await
        }));
    }
    drop(ready_tx);
    for _ in 0..args.clients {
        if ready_rx.recv().await != Some(true) {
            stop.cancel();
            anyhow::bail!(
                "a client failed to connect and subscribe after {CONNECT_ATTEMPTS} attempts"
            );
        }
    }
    Ok(Clients {
        handles,
        counters,
        stop,
        connect_secs: started.elapsed().as_secs_f64(),
    })
}

impl Clients {
    /// Waits until every client has counted what it should get (`expect`, by client), or
    /// `until`; then stops them and returns what each counted.
    pub(crate) async fn finish(
        self,
        expect: &[u64],
        until: Instant,
    ) -> anyhow::Result<Vec<ClientResult>> {
        while Instant::now() < until {
            if self
                .counters
                .iter()
                .zip(expect)
                .all(|(got, want)| got.load(Ordering::Relaxed) >= *want)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        let mut results = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            results.push(handle.await?);
        }
        Ok(results)
    }
}

/// Who one client is: where it connects from and to, and what it subscribes to.
struct ClientSpec {
    server: SocketAddr,
    source: IpAddr,
    negocio: String,
    /// Each client is its own user: the server limits connections per subject.
    sub: String,
    /// Ask for statistics snapshots.
    stats: bool,
}

async fn client(
    spec: ClientSpec,
    clock: Arc<Clock>,
    ready: tokio::sync::mpsc::Sender<bool>,
    stop: CancellationToken,
    counter: Arc<AtomicU64>,
) -> ClientResult {
    let mut result = ClientResult::default();
    let Some(mut ws) = subscribe_with_retries(&spec).await else {
        let _ = ready.send(false).await;
        return result;
    };
    let _ = ready.send(true).await;
    let mut seen = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => {
                let Some(Ok(Message::Text(text))) = msg else {
                    if matches!(msg, Some(Ok(_))) { continue; }
                    break;
                };
                let now = clock.epoch.elapsed().as_micros() as u64;
                // Borrowed fields only: the generator must not be what limits the figures.
                let Ok(v) = serde_json::from_str::<Wire>(&text) else { continue };
                match v.kind {
                    "estadisticas" => result.snapshots += 1,
                    t if t.starts_with("cita_") => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        count(&mut result, &mut seen, &clock, v.data.unwrap_or_default(), now);
                    }
                    _ => {}
                }
            }
        }
    }
    result
}

/// Attempts per client: a burst of thousands of connections can be shed by the server (its
/// pending-connection limit evicts sockets that have not sent their request yet), and a real
/// client reconnects.
const CONNECT_ATTEMPTS: u32 = 5;

async fn subscribe_with_retries(spec: &ClientSpec) -> Option<WebSocketStream<TcpStream>> {
    for attempt in 0..CONNECT_ATTEMPTS {
        if let Some(ws) = subscribe(spec).await {
            return Some(ws);
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    None
}

/// Connects from the spec's source address, sends its `subscribe` and waits for the answer.
async fn subscribe(spec: &ClientSpec) -> Option<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4().ok()?;
    let _ = socket.bind(SocketAddr::new(spec.source, 0));
    let stream = socket.connect(spec.server).await.ok()?;
    let _ = stream.set_nodelay(true);
    let token = citas_realtime::auth::jwt::mint_token(
        &citas_realtime::auth::SecretString::from(SECRET),
        json!({"negocio_id": spec.negocio, "sub": spec.sub}),
        Duration::from_secs(3600),
    )
    .unwrap_or_default();
    let url = format!("ws://{}/ws?token={token}", spec.server);
    // tungstenite's default 128 KiB read buffer is zero-filled before every read: with it,
    // memset was half of this generator's CPU (perf), starving the server it measures.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .ok()?;
    let channel = format!("estadisticas:{}", spec.negocio);
    let sub = json!({"type": "subscribe", "channel": channel, "stats": spec.stats});
    ws.send(Message::text(sub.to_string())).await.ok()?;
    let subscribed = async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg
                .to_text()
                .is_ok_and(|text| text.contains(r#""type":"subscribed""#))
            {
                return true;
            }
        }
        false
    };
    let answered = tokio::time::timeout(Duration::from_secs(30), subscribed).await;
    answered.unwrap_or(false).then_some(ws)
}

/// Counts one event that arrived at `now` (µs since the clock's epoch).
fn count(
    result: &mut ClientResult,
    seen: &mut std::collections::HashSet<i64>,
    clock: &Clock,
    data: WireData,
    now: u64,
) {
    result.received += 1;
    result.last_arrival_us = now;
    if !seen.insert(data.seq) {
        result.duplicates += 1;
    }
    if let Some(index) = index_of(data.cita_id) {
        if let Some(start) = clock.started.get(index as usize) {
            let start = start.load(Ordering::Relaxed);
            result.samples.push((index, now.saturating_sub(start)));
        }
    }
}

#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    data: Option<WireData<'a>>,
}

#[derive(Default, serde::Deserialize)]
struct WireData<'a> {
    #[serde(default)]
    seq: i64,
    #[serde(default, borrow)]
    cita_id: &'a str,
}
