//! RabbitMQ's management API, for what AMQP cannot tell: unacked message
//! counts per queue. The plugin is optional, so every answer here is
//! "if it answers quickly".

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

/// Percent-encodes everything but unreserved characters (a vhost in a
/// management API path: "/" is "%2F").
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The management API's URL for the queues of the AMQP URL's vhost, and
/// the credentials to use.
pub fn request(management: &str, amqp_url: &str) -> Option<(String, String, String)> {
    let uri: lapin::uri::AMQPUri = amqp_url.parse().ok()?;
    let vhost = if uri.vhost.is_empty() {
        "/"
    } else {
        uri.vhost.as_str()
    };
    let url = format!(
        "{}/api/queues/{}?columns=name,messages_unacknowledged",
        management.trim_end_matches('/'),
        percent_encode(vhost)
    );
    Some((
        url,
        uri.authority.userinfo.username,
        uri.authority.userinfo.password,
    ))
}

/// Unacked counts per queue from the management API, or None when it does
/// not answer quickly (it is optional). Its figures lag by its statistics
/// interval (5 s by default).
pub async fn unacked(
    management: &str,
    amqp_url: &str,
    names: &[String],
) -> Option<HashMap<String, u64>> {
    let (url, user, password) = request(management, amqp_url)?;
    exploder_common::tls::install_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    let response = client
        .get(&url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .map_err(|e| tracing::debug!("management API at {management}: {e}"))
        .ok()?;
    if !response.status().is_success() {
        tracing::debug!("management API at {management}: HTTP {}", response.status());
        return None;
    }
    let body: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
    let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut out = HashMap::new();
    for q in body.as_array()? {
        let Some(name) = q.get("name").and_then(Value::as_str) else {
            continue;
        };
        if !wanted.contains(name) {
            continue;
        }
        // A queue without statistics yet has no field: unknown, not 0.
        if let Some(n) = q.get("messages_unacknowledged").and_then(Value::as_u64) {
            out.insert(name.to_string(), n);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_management_url_carries_the_vhost_and_credentials() {
        let (url, user, password) = request(
            "http://127.0.0.1:15672/",
            "amqp://bot:s%40cret@127.0.0.1:5672/%2f",
        )
        .unwrap();
        assert_eq!(
            url,
            "http://127.0.0.1:15672/api/queues/%2F?columns=name,messages_unacknowledged"
        );
        assert_eq!((user.as_str(), password.as_str()), ("bot", "s@cret"));
        let (url, ..) = request("http://m:15672", "amqp://guest:guest@h/team%2Fa").unwrap();
        assert!(url.contains("/api/queues/team%2Fa?"), "{url}");
    }

    #[tokio::test]
    async fn unacked_comes_from_a_management_api_that_answers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = r#"[{"name":"p-exploder.layer","messages_unacknowledged":4},{"name":"other","messages_unacknowledged":9},{"name":"p-exploder.dead"}]"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
            request
        });
        let names = vec![
            "p-exploder.layer".to_string(),
            "p-exploder.dead".to_string(),
        ];
        let got = unacked(
            &format!("http://{addr}"),
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            &names,
        )
        .await
        .unwrap();
        assert_eq!(got.get("p-exploder.layer"), Some(&4));
        assert_eq!(got.get("p-exploder.dead"), None, "no statistics: unknown");
        assert!(!got.contains_key("other"));
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /api/queues/%2F?columns="),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: basic"),
            "{request}"
        );
        // Nothing listening: no unacked, no error.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(
            unacked(&format!("http://127.0.0.1:{port}"), "amqp://h", &names)
                .await
                .is_none()
        );
    }
}
