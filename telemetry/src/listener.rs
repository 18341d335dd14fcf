//! A listener's connections, bounded in number and in time: the webhook
//! receiver's (`exploder_producer::sources::webhook`) and the operational
//! endpoints' ([`crate::spawn`]).
//!
//! The webhook receiver faces registries across networks, and whoever else
//! can reach it; the metrics port whoever can reach the pod. `axum::serve` keeps a connection as long as the client likes
//! (an idle one, one sending its headers a byte a minute); here every
//! connection is served by hyper's HTTP/1 with a header read timeout (2 s
//! by default), which also ends a connection that sends no request for
//! that long, first or next; at most `max_connections` are served at once,
//! one client address holding at most a quarter of them; and at the cap
//! the connection idle the longest is closed to make room, so idle sockets
//! cannot lock senders out. Only when every connection is busy with a
//! request do new ones wait in the kernel's accept queue. A body's own
//! timeout and size, and authentication before it is read, are the
//! handler's.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// How long and how many: the connection limits of [`serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's headers must arrive within this of the connection
    /// opening or of the previous answer; a connection that sends none is
    /// closed.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(2),
            max_connections: 256,
        }
    }
}

impl ConnectionLimits {
    /// Connections one client address may hold: a quarter of the cap (at
    /// least one), so one host cannot take them all.
    pub fn per_address(&self) -> usize {
        (self.max_connections / 4).max(1)
    }
}

/// How long requests in flight may take to finish after `shutdown`.
const DRAIN: Duration = Duration::from_secs(30);

/// One open connection.
struct Conn {
    ip: IpAddr,
    /// Since when it has had no request in flight; `None` while busy.
    idle_since: Option<Instant>,
    /// Told to close (it is idle, and the oldest at the cap).
    close: Arc<Notify>,
    closing: bool,
}

/// Every open connection, for the cap, the per-address share and choosing
/// which idle one to close.
#[derive(Default)]
struct Table {
    conns: HashMap<u64, Conn>,
    per_ip: HashMap<IpAddr, usize>,
    next: u64,
}

impl Table {
    fn open(&mut self, ip: IpAddr, now: Instant) -> (u64, Arc<Notify>) {
        let id = self.next;
        self.next += 1;
        let close = Arc::new(Notify::new());
        self.conns.insert(
            id,
            Conn {
                ip,
                idle_since: Some(now),
                close: close.clone(),
                closing: false,
            },
        );
        *self.per_ip.entry(ip).or_default() += 1;
        (id, close)
    }

    fn closed(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id)
            && let Some(n) = self.per_ip.get_mut(&c.ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.ip);
            }
        }
    }

    fn held_by(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Connections counted against the cap: those not already told to
    /// close (they go within moments).
    fn live(&self) -> usize {
        self.conns.values().filter(|c| !c.closing).count()
    }

    /// Tells the connection idle the longest to close; false if every
    /// connection is busy.
    fn close_oldest_idle(&mut self) -> bool {
        let oldest = self
            .conns
            .values_mut()
            .filter(|c| !c.closing)
            .filter_map(|c| Some((c.idle_since?, c)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, c)) => {
                c.closing = true;
                // `notify_one` keeps the permit if the task is not waiting
                // yet.
                c.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn set_busy(&mut self, id: u64, busy: bool) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.idle_since = if busy { None } else { Some(Instant::now()) };
        }
    }
}

/// Marks a connection busy while a request is served, idle again after.
struct Busy {
    table: Arc<Mutex<Table>>,
    changed: Arc<Notify>,
    id: u64,
}

impl Busy {
    fn new(table: &Arc<Mutex<Table>>, changed: &Arc<Notify>, id: u64) -> Busy {
        table.lock().expect("table lock").set_busy(id, true);
        Busy {
            table: table.clone(),
            changed: changed.clone(),
            id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.table
            .lock()
            .expect("table lock")
            .set_busy(self.id, false);
        // A listener waiting at the cap may now close this one.
        self.changed.notify_one();
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (for at most 30 s). `name` names the listener
/// in log lines.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits.max_connections.max(1);
    let table = Arc::new(Mutex::new(Table::default()));
    // A connection closed, or one became idle: the cap may have room.
    let changed = Arc::new(Notify::new());
    let (stop, stopped) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    loop {
        // At the cap: close the connection idle the longest; if all are
        // busy, wait (new connections wait in the accept queue) until one
        // closes or goes idle.
        loop {
            let waiting = changed.notified();
            {
                let mut t = table.lock().expect("table lock");
                if t.live() < max || t.close_oldest_idle() {
                    break;
                }
            }
            tokio::select! {
                () = waiting => {}
                () = &mut shutdown => return drain(name, listener, &table, &changed, stop).await,
            }
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("{name} listener: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return drain(name, listener, &table, &changed, stop).await,
        };
        let (id, close) = {
            let mut t = table.lock().expect("table lock");
            if t.held_by(peer.ip()) >= limits.per_address() {
                tracing::debug!(client = %peer, "{name} connection refused: over its address's share");
                // Closed at once: this address holds its share already.
                continue;
            }
            t.open(peer.ip(), Instant::now())
        };
        let _ = stream.set_nodelay(true);
        let service = {
            let (table, changed, app) = (table.clone(), changed.clone(), app.clone());
            hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let busy = Busy::new(&table, &changed, id);
                // The client's address, for the per-address budget of
                // requests not yet authenticated (axum's `ConnectInfo`).
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let mut app = app.clone();
                async move {
                    let response = tower_service::Service::call(&mut app, req).await;
                    drop(busy);
                    response
                }
            })
        };
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let (table, changed, mut stopped) = (table.clone(), changed.clone(), stopped.clone());
        tokio::spawn(async move {
            tokio::pin!(conn);
            // A client gone or cut at a timeout: nothing to report.
            tokio::select! {
                _ = conn.as_mut() => {}
                () = close.notified() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
                () = async {
                    let _ = stopped.wait_for(|s| *s).await;
                } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            table.lock().expect("table lock").closed(id);
            changed.notify_one();
        });
    }
}

/// Stops accepting, tells every connection to finish its request and
/// close, and waits for them (for at most [`DRAIN`]).
async fn drain(
    name: &'static str,
    listener: TcpListener,
    table: &Mutex<Table>,
    changed: &Notify,
    stop: watch::Sender<bool>,
) {
    drop(listener);
    let _ = stop.send(true);
    let all_closed = async {
        loop {
            let waiting = changed.notified();
            if table.lock().expect("table lock").conns.is_empty() {
                return;
            }
            waiting.await;
        }
    };
    if tokio::time::timeout(DRAIN, all_closed).await.is_err() {
        tracing::warn!("{name} requests still in flight after {DRAIN:?}: stopping anyway");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_connection_idle_the_longest_is_closed() {
        let mut t = Table::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (a, close_a) = t.open(ip, t0);
        let (b, _) = t.open(ip, t0 + Duration::from_secs(1));
        let (c, _) = t.open(ip, t0 + Duration::from_secs(2));
        t.set_busy(a, true);
        assert!(t.close_oldest_idle());
        assert!(t.conns[&b].closing && !t.conns[&c].closing);
        assert_eq!(t.live(), 2);
        t.set_busy(c, true);
        assert!(!t.close_oldest_idle(), "every other connection is busy");
        drop(close_a);
        t.closed(b);
        assert_eq!(t.held_by(ip), 2);
    }

    #[test]
    fn one_address_holds_a_quarter_of_the_cap() {
        let l = |max_connections| ConnectionLimits {
            max_connections,
            ..Default::default()
        };
        assert_eq!(l(256).per_address(), 64);
        assert_eq!(l(2).per_address(), 1);
    }
}
