//! A TCP proxy in front of an emulator that a test can make fail the way networks and
//! services fail: refuse every connection with a reset, or answer every request with
//! `403 Forbidden` (a service account without the role). Stage programs pointed at it
//! (`STORAGE_EMULATOR_HOST`) meet those failures through their real clients. It also
//! counts the bytes it forwards each way, so a test can see what a program moved.
//!
//! ```no_run
//! # async fn example(upstream: &str) -> std::io::Result<()> {
//! use reel_testkit::proxy::{FaultyProxy, ProxyMode};
//! let proxy = FaultyProxy::start(upstream, ProxyMode::Reset).await?;
//! // … start a program with STORAGE_EMULATOR_HOST = proxy.url() …
//! proxy.set(ProxyMode::Forward);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with each new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProxyMode {
    /// Pass it to the upstream.
    Forward = 0,
    /// Close it at once with a TCP reset (connection reset by peer).
    Reset = 1,
    /// Read the request head and answer `403 Forbidden` with a Cloud Storage style JSON
    /// error, then close.
    Forbid = 2,
}

#[derive(Default)]
struct Counts {
    forwarded: AtomicUsize,
    reset: AtomicUsize,
    forbidden: AtomicUsize,
    /// Bytes the program sent (requests, uploads).
    sent: AtomicU64,
    /// Bytes the program received (responses, downloads).
    received: AtomicU64,
}

/// The proxy; it stops when dropped.
pub struct FaultyProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyProxy {
    /// Listen on a free loopback port and proxy to `upstream` (`http://host:port` or
    /// `host:port`), starting in `mode`.
    pub async fn start(upstream: &str, mode: ProxyMode) -> std::io::Result<FaultyProxy> {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let counts = Arc::new(Counts::default());
        let (m, c) = (mode.clone(), counts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (mode, counts, upstream) = (m.load(Ordering::SeqCst), c.clone(), upstream.clone());
                tokio::spawn(async move {
                    match mode {
                        0 => {
                            counts.forwarded.fetch_add(1, Ordering::Relaxed);
                            forward(client, &upstream, &counts).await;
                        }
                        1 => {
                            counts.reset.fetch_add(1, Ordering::Relaxed);
                            // A zero linger makes the close a reset, at once (the
                            // deprecation is about a non-zero linger blocking the drop).
                            #[allow(deprecated)]
                            let _ = client.set_linger(Some(Duration::ZERO));
                            drop(client);
                        }
                        _ => {
                            counts.forbidden.fetch_add(1, Ordering::Relaxed);
                            forbid(client).await;
                        }
                    }
                });
            }
        });
        Ok(FaultyProxy { addr, mode, counts, task })
    }

    /// `http://127.0.0.1:PORT`, for `STORAGE_EMULATOR_HOST`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What to do with connections from now on (open ones are not touched).
    pub fn set(&self, mode: ProxyMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Bytes forwarded so far: (sent by the program, received by it), counted as they
    /// pass (open connections included).
    pub fn bytes(&self) -> (u64, u64) {
        (self.counts.sent.load(Ordering::Relaxed), self.counts.received.load(Ordering::Relaxed))
    }

    /// Connections so far: (forwarded, reset, forbidden).
    pub fn connections(&self) -> (usize, usize, usize) {
        let c = &self.counts;
        (c.forwarded.load(Ordering::Relaxed), c.reset.load(Ordering::Relaxed), c.forbidden.load(Ordering::Relaxed))
    }
}

async fn forward(client: TcpStream, upstream: &str, counts: &Counts) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Each direction copied in its own loop, counting as it goes; either side closing
    // ends both.
    tokio::select! {
        _ = pump(&mut client_read, &mut server_write, &counts.sent) => {}
        _ = pump(&mut server_read, &mut client_write, &counts.received) => {}
    }
}

async fn pump(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

async fn forbid(mut client: TcpStream) {
    // The request head (the body, if any, is not read: the answer comes first).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    });
    let _ = read.await;
    let body = r#"{"error":{"code":403,"message":"reel-download@test.iam.gserviceaccount.com does not have storage.objects.get access to the Google Cloud Storage object.","errors":[{"reason":"forbidden"}]}}"#;
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}
