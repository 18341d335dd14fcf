//! An HTTP front for the test registry that behaves like a rate-limited
//! public registry: every answer carries Docker Hub's
//! `ratelimit-remaining` header, and requests for repositories whose name
//! contains `limited` are refused with 429, as Docker Hub refuses a client
//! past its limit.
//!
//! One request per connection: the request goes upstream with
//! `Connection: close`, the answer comes back with the header added after
//! its status line and the connection closes, so no HTTP parsing beyond
//! the head is needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The front; it stops accepting when dropped.
pub struct RateLimited {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl RateLimited {
    /// Fronts `upstream` (`host:port`), saying `remaining` requests are left.
    pub fn start(upstream: &str, remaining: u32) -> RateLimited {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (upstream, stopped) = (upstream.to_string(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let _ = relay(conn, &upstream, remaining);
                });
            }
        });
        RateLimited { port, stop }
    }

    /// `127.0.0.1:<port>`: use it as the registry's address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RateLimited {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn relay(client: TcpStream, upstream: &str, remaining: u32) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") || lower.starts_with("host:") {
            continue;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut client = client;
    let path = request_line.split_whitespace().nth(1).unwrap_or_default();
    let limit =
        format!("ratelimit-limit: 100;w=21600\r\nratelimit-remaining: {remaining};w=21600\r\n");
    if path.contains("limited") {
        let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#;
        write!(
            client,
            "HTTP/1.1 429 Too Many Requests\r\n{limit}retry-after: 0\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(request_line.as_bytes())?;
    write!(up, "Host: {upstream}\r\nConnection: close\r\n")?;
    up.write_all(&head)?;
    up.write_all(b"\r\n")?;
    up.write_all(&body)?;
    let mut answer = BufReader::new(up);
    let mut status = String::new();
    answer.read_line(&mut status)?;
    client.write_all(status.as_bytes())?;
    client.write_all(limit.as_bytes())?;
    std::io::copy(&mut answer, &mut client)?;
    client.shutdown(Shutdown::Both)
}
