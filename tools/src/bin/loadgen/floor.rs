//! `loadgen --floor`: what this machine's kernel charges for a fan-out, whoever writes it.
//!
//! Instead of citas-realtime and PostgreSQL, the clients connect to a minimal WebSocket fan-out
//! (this executable again, in `--serve-floor` mode, in its own process so its CPU is measured
//! apart). It finishes the handshake, answers the client's `subscribe`, then takes the socket out
//! of tokio. For each event, plain threads write one pre-encoded frame straight to every
//! subscriber's socket with `write(2)`: no hub, no queues, no tasks, no tungstenite, no
//! database on the path. That is one syscall per recipient, the least any server here can do.
//!
//! The generator is the same as for the real server (same clients, same pacing, same
//! figures); the writer's "write" is a control message naming the event, so the floor's
//! latency starts at the same instant but omits the commit and the listener's read of the log.
//! Run both with the same arguments, one after the other, and compare: the real server's
//! distance from the floor is what user space could still win; the floor's own figure is what
//! this machine allows.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, RwLock};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The path the generator's control connection asks for; any other path is a client.
pub const CONTROL_PATH: &str = "/control";

/// Every subscribed socket, by negocio index, taken out of tokio (still non-blocking).
type Registry = Arc<RwLock<Vec<Vec<std::net::TcpStream>>>>;

/// One event, framed once, for the subscribers of one negocio.
struct Frame {
    negocio: usize,
    bytes: Vec<u8>,
}

/// Serves clients on `bind` until the control connection closes; `threads` write the frames.
pub async fn serve(bind: SocketAddr, negocios: usize, threads: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind(bind).await?;
    let negocios = negocios.max(1);
    let registry: Registry = Arc::new(RwLock::new((0..negocios).map(|_| Vec::new()).collect()));
    let writers: Vec<mpsc::Sender<Arc<Frame>>> = (0..threads.max(1))
        .map(|t| {
            let (tx, rx) = mpsc::channel::<Arc<Frame>>();
            let registry = registry.clone();
            let threads = threads.max(1);
            std::thread::spawn(move || write_loop(t, threads, &registry, rx));
            tx
        })
        .collect();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = done_rx.recv() => return Ok(()),
        };
        let registry = registry.clone();
        let writers = writers.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Some((ws, path)) = handshake(stream).await else {
                return;
            };
            if path == CONTROL_PATH {
                control(ws, negocios, &writers).await;
                let _ = done.send(()).await;
            } else {
                subscriber(ws, negocios, &registry).await;
            }
        });
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The WebSocket handshake, and the path the client asked for.
async fn handshake(stream: tokio::net::TcpStream) -> Option<(Socket, String)> {
    let mut path = String::new();
    // tungstenite's callback type, not ours, has the large error.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .ok()?;
    Some((ws, path))
}

/// The generator's control connection: each text message is an event index; frame it once
/// per negocio and hand it to every writer thread. Returns when the connection closes.
async fn control(mut ws: Socket, negocios: usize, writers: &[mpsc::Sender<Arc<Frame>>]) {
    while let Some(Ok(msg)) = ws.next().await {
        let Ok(index) = msg.to_text().unwrap_or_default().parse::<u64>() else {
            continue;
        };
        let negocio = (index % negocios as u64) as usize;
        let frame = Arc::new(Frame {
            negocio,
            bytes: encode(&event_json(index, negocio)),
        });
        for w in writers {
            let _ = w.send(frame.clone());
        }
    }
}

/// A client: its first message is `subscribe` to `estadisticas:n<K>`; answered, its socket is
/// taken out of tokio into the registry.
async fn subscriber(mut ws: Socket, negocios: usize, registry: &Registry) {
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        return;
    };
    let Ok(sub) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    let channel = sub["channel"].as_str().unwrap_or_default().to_string();
    let Some(negocio) = channel
        .strip_prefix("estadisticas:n")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < negocios)
    else {
        return;
    };
    let reply = serde_json::json!({"type": "subscribed", "channel": channel});
    if ws.send(Message::text(reply.to_string())).await.is_err() {
        return;
    }
    let Ok(tcp) = ws.into_inner().into_std() else {
        return;
    };
    if let Ok(mut registry) = registry.write() {
        registry[negocio].push(tcp);
    }
}

/// One writer thread: for each event, its share of the negocio's sockets (every `threads`-th,
/// starting at `t`), one `write(2)` each. A socket that cannot take the whole frame at once is
/// skipped and counted (at the rates measured here it does not happen; if it did, the client
/// would report the event lost).
fn write_loop(t: usize, threads: usize, registry: &Registry, events: mpsc::Receiver<Arc<Frame>>) {
    let mut short = 0u64;
    for frame in events {
        let Ok(registry) = registry.read() else {
            return;
        };
        for socket in registry[frame.negocio].iter().skip(t).step_by(threads) {
            match (&*socket).write(&frame.bytes) {
                Ok(n) if n == frame.bytes.len() => {}
                _ => short += 1,
            }
        }
    }
    if short > 0 {
        eprintln!("floor writer {t}: {short} frames not written whole");
    }
}

/// The event as citas-realtime would send it (same fields, same size).
fn event_json(index: u64, negocio: usize) -> String {
    serde_json::json!({
        "type": "cita_insert",
        "channel": format!("estadisticas:n{negocio}"),
        "data": {
            "action": "INSERT",
            "negocio_id": format!("n{negocio}"),
            "cita_id": super::cita_id(index),
            "estado": "pendiente",
            "seq": index + 1,
            "timestamp": "2026-11-29T00:00:00.000000+00:00",
        }
    })
    .to_string()
}

/// An unmasked server-to-client text frame (RFC 6455 §5.2), built by hand: this path must not
/// go through a WebSocket library's per-message work.
fn encode(payload: &str) -> Vec<u8> {
    let len = payload.len();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81); // FIN + text
    if len < 126 {
        frame.push(len as u8);
    } else if len <= u16::MAX as usize {
        frame.push(126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload.as_bytes());
    frame
}
