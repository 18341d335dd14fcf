//! A TCP gate in front of a server, for a registry that stalls or is not
//! there yet: while closed it accepts connections and never answers (as a
//! hung server does); once opened it relays every connection, the held
//! ones included, to its target.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl Gate {
    /// A closed gate on a free loopback port, relaying to `target`
    /// (`host:port`) once opened.
    pub fn closed(target: &str) -> Gate {
        Self::bind(
            TcpListener::bind("127.0.0.1:0").expect("bind the gate"),
            target,
            false,
        )
    }

    /// An open gate on `port` (a server that comes up late where it was
    /// expected).
    pub fn open_at(port: u16, target: &str) -> Gate {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the gate's port");
        Self::bind(listener, target, true)
    }

    fn bind(listener: TcpListener, target: &str, open: bool) -> Gate {
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let gate = Gate {
            port,
            open: Arc::new(AtomicBool::new(open)),
            stop: Arc::new(AtomicBool::new(false)),
            accepted: Arc::new(AtomicUsize::new(0)),
        };
        let (open, stop, accepted) = (gate.open.clone(), gate.stop.clone(), gate.accepted.clone());
        let target = target.to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let (open, stop, target) = (open.clone(), stop.clone(), target.clone());
                        std::thread::spawn(move || hold_then_relay(client, &target, &open, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        gate
    }

    /// `127.0.0.1:PORT`: use it as the registry's address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Relays from now on, the connections held so far included.
    pub fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn hold_then_relay(client: TcpStream, target: &str, open: &AtomicBool, stop: &AtomicBool) {
    let _ = client.set_nonblocking(false);
    while !open.load(Ordering::Relaxed) {
        if stop.load(Ordering::Relaxed) {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Ok(server) = TcpStream::connect(target) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (mut c1, mut s1) = (client, server);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s2, &mut c2);
        let _ = c2.shutdown(Shutdown::Both);
        let _ = s2.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut c1, &mut s1);
    let _ = c1.shutdown(Shutdown::Both);
    let _ = s1.shutdown(Shutdown::Both);
}
