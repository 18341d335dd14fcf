//! A TLS server for tests, on rustls with ring (the workspace's one crypto
//! provider, docs/ARCHITECTURE.md "TLS"), with a certificate for
//! `127.0.0.1` and `localhost` from a test CA baked in below. A client
//! trusts it through `SSL_CERT_FILE=<`[`TlsServer::ca_file`]`>`, as
//! exploder's clients trust a private CA in production.
//!
//! The certificates (ECDSA P-256, valid 2000-2100) were made once with
//! `openssl req` and `openssl ca`; the key is a test key and nothing else.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;

/// The test CA (`CN=exploder test CA`).
pub const CA_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIIBaTCCAQ+gAwIBAgIBATAKBggqhkjOPQQDAjAbMRkwFwYDVQQDDBBleHBsb2Rl
ciB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAwWjAbMRkw
FwYDVQQDDBBleHBsb2RlciB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcD
QgAEtJ/6GwZms2Dz+Wt+vpuha1aotwairrf66+9mSU8zdsKyqf557brTV3SAiAsO
Pn3e+bbgaKULTsKq70PmleBxe6NCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwHQYDVR0OBBYEFN1UD99WMnkSAhrLqj+aHMaWnuduMAoGCCqGSM49
BAMCA0gAMEUCIQCPwJ/iQ7ecrlr8V/lhL5SQqxov4r5eRzEfRWeSqpvbfwIgds8g
HgjvC6zjN7juHD1gEj+l9SZKCM27Dj3CmWbZvJo=
-----END CERTIFICATE-----
";

/// The server's certificate: `CN=127.0.0.1`, SAN IP 127.0.0.1 and DNS
/// localhost, issued by [`CA_PEM`].
const SERVER_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIIBtDCCAVmgAwIBAgIBAjAKBggqhkjOPQQDAjAbMRkwFwYDVQQDDBBleHBsb2Rl
ciB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAwWjAUMRIw
EAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARrmhyW
Ww+fLxiCj7V+3VVyrBuyPzJfBlaJAG75cvbh0IgCG2V/9mkGXt/ygMlP3eZvAJYP
lUDezrIyNZ0/KI+co4GSMIGPMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeA
MBMGA1UdJQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2FsaG9z
dDAfBgNVHSMEGDAWgBTdVA/fVjJ5EgIay6o/mhzGlp7nbjAdBgNVHQ4EFgQUC/YX
TQqG+2HoT+O1cXSVbw+HpvwwCgYIKoZIzj0EAwIDSQAwRgIhAOsLCDACRKn7eQY/
f9KCAXWsN9ici1fusfMtlD/r9PqUAiEApFPSsatItW3loTyojuGns5yWtUXhkrVv
uQUeL29NID4=
-----END CERTIFICATE-----
";

/// The server's key (PKCS#8).
const SERVER_KEY_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgay0HF9tXQJZh25HW
slFTT6B2mFkRIxVgq9R5iqL89UyhRANCAARrmhyWWw+fLxiCj7V+3VVyrBuyPzJf
BlaJAG75cvbh0IgCG2V/9mkGXt/ygMlP3eZvAJYPlUDezrIyNZ0/KI+c
-----END PRIVATE KEY-----
";

/// A TLS server on loopback that answers every connection with the same
/// bytes (an HTTP response) and reports what each client sent first. Its
/// thread outlives it (it blocks in `accept`); the test process ends it.
pub struct TlsServer {
    port: u16,
    requests: Receiver<String>,
    /// Holds `ca.pem`.
    dir: TempDir,
}

impl TlsServer {
    /// Sends `response` (for HTTP: status line, headers and body) on each
    /// connection whose TLS handshake completes, once the client has sent
    /// a request's head or paused for a second.
    pub fn start(response: String) -> TlsServer {
        let certs =
            vec![CertificateDer::from_pem_slice(SERVER_PEM.as_bytes()).expect("server cert")];
        let key = PrivateKeyDer::from_pem_slice(SERVER_KEY_PEM.as_bytes()).expect("server key");
        // The provider given, not the process default: a test process
        // installs none.
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate and key");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (tx, requests) = channel();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                // A client that rejects the certificate ends here.
                if tls.conn.complete_io(&mut tls.sock).is_err() {
                    continue;
                }
                // What it sends up to a blank line (an HTTP request's
                // head), or up to a pause (AMQP's protocol header).
                let mut reader = BufReader::new(tls);
                let mut head = Vec::new();
                loop {
                    let mut line = Vec::new();
                    let read = reader.read_until(b'\n', &mut line);
                    let blank = line == b"\r\n";
                    head.extend(line);
                    match read {
                        Ok(n) if n > 0 && !blank => {}
                        _ => break,
                    }
                }
                let tls = reader.get_mut();
                let _ = tls.write_all(response.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
                if tx
                    .send(String::from_utf8_lossy(&head).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        let dir = tempfile::Builder::new()
            .prefix("tls-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), CA_PEM).expect("write ca.pem");
        TlsServer {
            port,
            requests,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA's certificate as a PEM file, for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// What the client of the next connection whose handshake completed
    /// sent first (an HTTP request's head: request line and headers), if
    /// one comes within `timeout`.
    pub fn connection(&self, timeout: Duration) -> Option<String> {
        self.requests.recv_timeout(timeout).ok()
    }
}
