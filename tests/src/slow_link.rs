//! A TCP relay on loopback that caps each connection's downstream, so a
//! loopback server (the test registry) is as slow as a remote one.
//!
//! On loopback a fleet pulls a 50 MB layer in a second or two and a whole
//! workload is done before a fault can land; behind this relay a layer
//! download takes as long as it would from a registry in another data
//! centre, so work is in flight when a test strikes. Each connection gets
//! the full rate (a registry's limit is per connection, not per client).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The relay; it stops accepting and cuts every connection when dropped.
pub struct SlowLink {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Conns,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl SlowLink {
    /// Relays `127.0.0.1:<port>` to `target` (`host:port`), each
    /// connection's server-to-client bytes paced to `bytes_per_sec`.
    pub fn start(target: &str, bytes_per_sec: u64) -> SlowLink {
        assert!(bytes_per_sec > 0, "a rate of 0 would never deliver");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the slow link");
        let port = listener.local_addr().unwrap().port();
        // Polled, so that drop can stop it without a connection of its own.
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Default::default();
        let target = target.to_string();
        let acceptor = {
            let (stop, conns) = (stop.clone(), conns.clone());
            std::thread::spawn(move || {
                let mut next_id = 0;
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            next_id += 1;
                            relay(client, &target, bytes_per_sec, next_id, &conns);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        SlowLink {
            port,
            stop,
            conns,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`: use it in references instead of the server's.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Open connections by id, both ends, so that drop can cut them.
type Conns = Arc<Mutex<HashMap<u64, [TcpStream; 2]>>>;

/// Connects `client` to `target` with two pumps: upstream as fast as it
/// comes, downstream paced. Either side closing closes both.
fn relay(client: TcpStream, target: &str, bytes_per_sec: u64, id: u64, conns: &Conns) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(target) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    conns.lock().unwrap().insert(id, [c3, s3]);
    let up = conns.clone();
    std::thread::spawn(move || {
        pump(client, server, None);
        up.lock().unwrap().remove(&id);
    });
    let down = conns.clone();
    std::thread::spawn(move || {
        pump(s2, c2, Some(bytes_per_sec));
        down.lock().unwrap().remove(&id);
    });
}

/// Copies `from` to `to` until either ends, at most `rate` bytes a second
/// (no burst: time a connection spent idle is not credit), then shuts both
/// down, which ends the opposite pump too.
fn pump(mut from: TcpStream, mut to: TcpStream, rate: Option<u64>) {
    let mut buf = vec![0u8; 16 << 10];
    let mut due = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(rate) = rate {
            due = due.max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for [a, b] in self.conns.lock().unwrap().drain().map(|(_, c)| c) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}
