//! A fault-injecting TCP proxy in front of a server (the test registry):
//! it answers or cuts chosen requests, and records every request head, so
//! a test can break a download mid-body, make a registry answer 429 or 401
//! once, trickle an answer, or serve a manifest that lies about its digest.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
/// What the proxy does to the next request whose request line starts
/// with the given prefix (each fault is used once).
pub enum Fault {
    /// Answer it itself (status line, extra headers, body), then close.
    /// A Content-Length is added unless the headers frame the body.
    Respond(&'static str, Vec<String>, Vec<u8>),
    /// Forward it, but cut the connection after this many bytes of the
    /// answer (headers included).
    CutAfter(usize),
    /// Forward it, but send the answer (headers included) one byte at a
    /// time, this long apart: a registry that trickles.
    Trickle(Duration),
}

/// A plain TCP proxy on a loopback port, one thread per direction and
/// connection. HTTP/1.1 without pipelining: the requests it sees are
/// GETs and HEADs without bodies, each sent after the previous answer.
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Mutex<Vec<(String, Fault)>>>,
    /// Request heads seen, in order.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Relays `127.0.0.1:<port>` to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = FaultProxy {
            addr: listener.local_addr().unwrap(),
            faults: Arc::default(),
            seen: Arc::default(),
            stop: Arc::default(),
        };
        let (faults, seen, stop) = (proxy.faults.clone(), proxy.seen.clone(), proxy.stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (faults, seen) = (faults.clone(), seen.clone());
                std::thread::spawn(move || FaultProxy::serve(client, upstream, &faults, &seen));
            }
        });
        proxy
    }

    /// Applies `fault` to the next request whose head starts with
    /// `request_prefix` (e.g. `"GET /v2/team/app/blobs/"`).
    pub fn inject(&self, request_prefix: &str, fault: Fault) {
        self.faults
            .lock()
            .unwrap()
            .push((request_prefix.to_string(), fault));
    }

    /// The request heads seen so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// `127.0.0.1:PORT`: use it instead of the server's address.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// How many injected faults no request has used yet.
    pub fn unused_faults(&self) -> usize {
        self.faults.lock().unwrap().len()
    }

    fn serve(
        mut client: TcpStream,
        upstream: SocketAddr,
        faults: &Mutex<Vec<(String, Fault)>>,
        seen: &Mutex<Vec<String>>,
    ) {
        let Ok(mut upstream) = TcpStream::connect(upstream) else {
            return;
        };
        // How many more answer bytes to let through (None: all).
        let budget: Arc<Mutex<Option<usize>>> = Arc::default();
        let (mut from_upstream, mut to_client) =
            (upstream.try_clone().unwrap(), client.try_clone().unwrap());
        let answer_budget = budget.clone();
        // How far apart to send the answer's bytes (None: as they come).
        let pace: Arc<Mutex<Option<Duration>>> = Arc::default();
        let answer_pace = pace.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = match from_upstream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut budget = answer_budget.lock().unwrap();
                let allowed = budget.map_or(n, |left| left.min(n));
                let paced = *answer_pace.lock().unwrap();
                let written = match paced {
                    None => to_client.write_all(&buf[..allowed]),
                    Some(gap) => buf[..allowed].iter().try_for_each(|byte| {
                        std::thread::sleep(gap);
                        to_client.write_all(std::slice::from_ref(byte))
                    }),
                };
                if written.is_err() {
                    break;
                }
                if let Some(left) = budget.as_mut() {
                    *left -= allowed;
                    if allowed < n {
                        break;
                    }
                }
            }
            let _ = to_client.shutdown(Shutdown::Both);
            let _ = from_upstream.shutdown(Shutdown::Both);
        });
        let mut pending = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = pending.drain(..end + 4).collect();
                let text = String::from_utf8_lossy(&head).to_string();
                seen.lock().unwrap().push(text.clone());
                let fault = {
                    let mut faults = faults.lock().unwrap();
                    let found = faults
                        .iter()
                        .position(|(prefix, _)| text.starts_with(prefix.as_str()));
                    found.map(|i| faults.remove(i).1)
                };
                match fault {
                    Some(Fault::Respond(status, headers, body)) => {
                        let mut answer = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
                        for h in headers {
                            answer.push_str(&h);
                            answer.push_str("\r\n");
                        }
                        let framed = answer.to_ascii_lowercase();
                        let framed = framed.contains("content-length:")
                            || framed.contains("transfer-encoding:");
                        if !framed && !text.starts_with("HEAD ") {
                            answer.push_str(&format!("Content-Length: {}\r\n", body.len()));
                        }
                        answer.push_str("\r\n");
                        let _ = client.write_all(answer.as_bytes());
                        let _ = client.write_all(&body);
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = upstream.shutdown(Shutdown::Both);
                        return;
                    }
                    Some(Fault::CutAfter(bytes)) => *budget.lock().unwrap() = Some(bytes),
                    Some(Fault::Trickle(gap)) => *pace.lock().unwrap() = Some(gap),
                    None => {}
                }
                if upstream.write_all(&head).is_err() {
                    return;
                }
            }
        }
        let _ = upstream.shutdown(Shutdown::Both);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}
