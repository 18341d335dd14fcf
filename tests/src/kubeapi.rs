//! A Kubernetes API server of a test's own, for `image.openshift.io/v1`
//! ImageStreams only, speaking the real list/watch protocol: lists carry a
//! `resourceVersion`; `?watch=true&resourceVersion=N` streams newline-
//! delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`) over
//! a chunked response; a `resourceVersion` older than the retained history
//! gets an `ERROR` event with a `410 Gone` Status, as a compacted etcd does.
//!
//! Tests change objects with [`KubeApi::apply`] / [`KubeApi::delete`], cut
//! every open watch with [`KubeApi::disconnect_watches`], and forget the
//! event history with [`KubeApi::compact`] (the next watch from an old
//! version gets 410 and the client must relist). It counts list requests,
//! so a test can tell a relist happened.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Default)]
struct State {
    version: u64,
    /// (namespace, name) → object.
    objects: BTreeMap<(String, String), Value>,
    /// Every change since the last compaction: (version, type, object).
    events: Vec<(u64, &'static str, Value)>,
    /// Watches from a version below this get 410 Gone.
    oldest: u64,
    /// Bumped to end every open watch.
    generation: u64,
    /// coordination.k8s.io Leases: (namespace, name) → object.
    leases: BTreeMap<(String, String), Value>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    lists: AtomicUsize,
    stop: AtomicBool,
}

pub struct KubeApi {
    port: u16,
    shared: Arc<Shared>,
}

impl KubeApi {
    pub fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                version: 100,
                oldest: 100,
                ..Default::default()
            }),
            changed: Condvar::new(),
            lists: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        KubeApi { port, shared }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig pointing at this server (plain HTTP, no auth).
    pub fn write_kubeconfig(&self, path: &Path) {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    \
             cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\n",
            self.url()
        );
        std::fs::write(path, config).unwrap();
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`).
    pub fn apply(&self, mut object: Value) {
        let mut st = self.shared.state.lock().unwrap();
        st.version += 1;
        let version = st.version;
        let meta = &mut object["metadata"];
        let key = (
            meta["namespace"].as_str().unwrap().to_string(),
            meta["name"].as_str().unwrap().to_string(),
        );
        meta["resourceVersion"] = json!(version.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{}-{}", key.0, key.1));
        }
        let kind = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key, object.clone());
        st.events.push((version, kind, object));
        self.shared.changed.notify_all();
    }

    /// Deletes an object (`DELETED`).
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut st = self.shared.state.lock().unwrap();
        let Some(mut object) = st
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            return;
        };
        st.version += 1;
        let version = st.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        st.events.push((version, "DELETED", object));
        self.shared.changed.notify_all();
    }

    /// Forgets the event history and ends every open watch, as when etcd
    /// compacts under a dropped connection: the client's next watch, from
    /// its last version, gets 410 Gone and it must list again.
    pub fn compact(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.version += 1;
        st.oldest = st.version;
        st.events.clear();
        st.generation += 1;
        self.shared.changed.notify_all();
    }

    /// Ends every open watch (the client reconnects from its last version).
    pub fn disconnect_watches(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.generation += 1;
        self.shared.changed.notify_all();
    }

    /// How many list requests were served.
    pub fn lists(&self) -> usize {
        self.shared.lists.load(Ordering::Relaxed)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.disconnect_watches();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// An ImageStream in OpenShift's JSON shape whose tags point at
/// `registry/<namespace>/<name>@<digest>`.
pub fn image_stream(namespace: &str, name: &str, registry: &str, tags: &[(&str, &str)]) -> Value {
    let repo = format!("{registry}/{namespace}/{name}");
    json!({
        "kind": "ImageStream",
        "apiVersion": "image.openshift.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": 1,
            "creationTimestamp": "2026-11-24T10:00:00Z",
        },
        "spec": {
            "lookupPolicy": {"local": false},
            "tags": tags.iter().map(|(tag, _)| json!({
                "name": tag,
                "from": {"kind": "DockerImage", "name": format!("{repo}:{tag}")},
                "generation": 1,
                "importPolicy": {},
                "referencePolicy": {"type": "Source"},
            })).collect::<Vec<_>>(),
        },
        "status": {
            "dockerImageRepository": repo,
            "tags": tags.iter().map(|(tag, digest)| json!({
                "tag": tag,
                "items": [{
                    "created": "2026-11-24T10:00:00Z",
                    "dockerImageReference": format!("{repo}@{digest}"),
                    "image": digest,
                    "generation": 1,
                }],
            })).collect::<Vec<_>>(),
        },
    })
}

fn serve(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        std::io::Read::read_exact(&mut reader, &mut body)?;
        let method = request_line
            .split_whitespace()
            .next()
            .unwrap_or("GET")
            .to_string();
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<&str, &str> =
            query.split('&').filter_map(|p| p.split_once('=')).collect();
        if let Some(rest) = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/") {
            let (status, reply) = lease(shared, &method, rest, &body);
            respond(&mut conn, status, &reply)?;
            continue;
        }
        let namespace = match path
            .strip_prefix("/apis/image.openshift.io/v1/namespaces/")
            .and_then(|r| r.strip_suffix("/imagestreams"))
        {
            Some(ns) => Some(ns.to_string()),
            None if path == "/apis/image.openshift.io/v1/imagestreams" => None,
            None => {
                respond(
                    &mut conn,
                    404,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                )?;
                continue;
            }
        };
        if matches!(params.get("watch"), Some(&"true") | Some(&"1")) {
            return watch(conn, shared, namespace.as_deref(), &params);
        }
        shared.lists.fetch_add(1, Ordering::Relaxed);
        let st = shared.state.lock().unwrap();
        let items: Vec<&Value> = st
            .objects
            .iter()
            .filter(|((ns, _), _)| namespace.as_ref().is_none_or(|n| n == ns))
            .map(|(_, o)| o)
            .collect();
        let body = json!({
            "kind": "ImageStreamList",
            "apiVersion": "image.openshift.io/v1",
            "metadata": {"resourceVersion": st.version.to_string()},
            "items": items,
        });
        drop(st);
        respond(&mut conn, 200, &body)?;
    }
}

fn respond(conn: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap();
    write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    conn.write_all(&body)?;
    conn.flush()
}

fn chunk(conn: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).unwrap();
    line.push(b'\n');
    write!(conn, "{:x}\r\n", line.len())?;
    conn.write_all(&line)?;
    conn.write_all(b"\r\n")?;
    conn.flush()
}

fn watch(
    mut conn: TcpStream,
    shared: &Shared,
    namespace: Option<&str>,
    params: &BTreeMap<&str, &str>,
) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = params.get("allowWatchBookmarks") == Some(&"true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let deadline = Instant::now() + timeout;
    let mut st = shared.state.lock().unwrap();
    if from < st.oldest {
        drop(st);
        chunk(
            &mut conn,
            &json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410,
            }}),
        )?;
        return conn.write_all(b"0\r\n\r\n");
    }
    let generation = st.generation;
    let mut sent = from;
    loop {
        if st.generation != generation || Instant::now() > deadline {
            drop(st);
            return conn.write_all(b"0\r\n\r\n");
        }
        let pending: Vec<(u64, &'static str, Value)> = st
            .events
            .iter()
            .filter(|(v, _, o)| {
                *v > sent
                    && namespace.is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n))
            })
            .cloned()
            .collect();
        let version = st.version;
        drop(st);
        for (v, kind, object) in pending {
            chunk(&mut conn, &json!({"type": kind, "object": object}))?;
            sent = v;
        }
        if bookmarks && version > sent {
            chunk(
                &mut conn,
                &json!({"type": "BOOKMARK", "object": {
                    "kind": "ImageStream", "apiVersion": "image.openshift.io/v1",
                    "metadata": {"resourceVersion": version.to_string()},
                }}),
            )?;
            sent = version;
        }
        st = shared.state.lock().unwrap();
        if st.generation == generation && !st.events.iter().any(|(v, _, _)| *v > sent) {
            st = shared
                .changed
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap()
                .0;
        }
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code, "message": reason})
}

/// GET, POST (create) and PUT (replace, compare-and-swap on
/// resourceVersion) of Leases, as leader election uses them.
fn lease(shared: &Shared, method: &str, rest: &str, body: &[u8]) -> (u16, Value) {
    let mut parts = rest.split('/');
    let (Some(ns), Some("leases")) = (parts.next(), parts.next()) else {
        return (404, status(404, "NotFound"));
    };
    let name = parts.next();
    let mut st = shared.state.lock().unwrap();
    match (method, name) {
        ("GET", Some(name)) => match st.leases.get(&(ns.to_string(), name.to_string())) {
            Some(l) => (200, l.clone()),
            None => (404, status(404, "NotFound")),
        },
        ("POST", None) | ("PUT", Some(_)) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                return (400, status(400, "BadRequest"));
            };
            let name = name
                .map(str::to_string)
                .or_else(|| object["metadata"]["name"].as_str().map(str::to_string))
                .unwrap_or_default();
            let key = (ns.to_string(), name);
            match (method, st.leases.get(&key)) {
                ("POST", Some(_)) => return (409, status(409, "AlreadyExists")),
                ("PUT", None) => return (404, status(404, "NotFound")),
                ("PUT", Some(current))
                    if current["metadata"]["resourceVersion"]
                        != object["metadata"]["resourceVersion"] =>
                {
                    return (409, status(409, "Conflict"));
                }
                _ => {}
            }
            st.version += 1;
            object["metadata"]["resourceVersion"] = json!(st.version.to_string());
            object["metadata"]["namespace"] = json!(ns);
            object["apiVersion"] = json!("coordination.k8s.io/v1");
            object["kind"] = json!("Lease");
            st.leases.insert(key, object.clone());
            (if method == "POST" { 201 } else { 200 }, object)
        }
        _ => (405, status(405, "MethodNotAllowed")),
    }
}

impl KubeApi {
    /// Who holds a Lease now.
    pub fn lease_holder(&self, namespace: &str, name: &str) -> Option<String> {
        let st = self.shared.state.lock().unwrap();
        st.leases
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    }
}
