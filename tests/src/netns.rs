//! Several hosts on one machine, for partition tests: network namespaces
//! ("hosts"), each with one leg (a veth pair) on a bridge in a hub
//! namespace of their own, addresses in a private /24, and faults made with
//! iptables inside a host.
//!
//! ```text
//!   host "svc" 10.88.0.1 ─┐
//!   host "w1"  10.88.0.2 ─┼─ br0 (hub namespace)
//!   host "w2"  10.88.0.3 ─┘
//! ```
//!
//! Nothing touches the root namespace: dockerd on this machine sets its
//! FORWARD policy to DROP (and may load br_netfilter), so traffic routed or
//! bridged there could vanish for reasons of Docker's; the hub's own
//! iptables are empty. Each lab is its own island, so every lab may use the
//! same subnet. Names are unique per run (`xp<6 hex>-<label>`), and
//! [`Lab`]'s drop kills what runs in its namespaces and deletes them (their
//! veths go with them), also when the test fails.
//!
//! A fault is a blackhole: `iptables -j DROP` in both directions inside one
//! host ([`Host::cut`]), so packets vanish without a reset and established
//! connections stay half-open, as in a real partition. Healing removes the
//! rules. Bandwidth is capped with an htb qdisc on the hub's side of a
//! host's leg ([`Host::throttle_from`]): the kernel has no netem.
//!
//! Processes run in a host with `ip netns exec` ([`Host::command`]); the
//! test's own clients (pushing to a registry, asking a daemon's `/readyz`)
//! run on a thread moved into the host's namespace ([`Host::run`]), and so
//! do the processes such a thread starts.
//!
//! Needs root, iproute2 and iptables (`scripts/test` installs them).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The first three octets of every lab's /24.
const SUBNET: [u8; 3] = [10, 88, 0];

/// Namespaces joined by a hub; everything in them is killed and the
/// namespaces deleted on drop.
pub struct Lab {
    id: String,
    hub: String,
    /// The namespaces of the hosts, in the order they were made.
    hosts: Vec<String>,
}

/// One host of a [`Lab`]: a network namespace with one interface, `eth0`.
#[derive(Clone, Debug)]
pub struct Host {
    /// What the test calls it ("svc", "w1").
    pub label: String,
    /// Its namespace (`ip netns`).
    pub netns: String,
    /// Its address in the lab.
    pub addr: Ipv4Addr,
    /// The hub namespace, and the hub's end of this host's leg.
    hub: String,
    hub_if: String,
}

impl Lab {
    /// A hub with its bridge; panics with what to install when the
    /// machine cannot make one.
    pub fn new() -> Lab {
        assert!(
            rustix::process::geteuid().is_root(),
            "network namespaces need root: run the partition tests as root"
        );
        for tool in ["ip", "iptables", "tc"] {
            assert!(
                Command::new(tool)
                    .arg("-V")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok(),
                "{tool} is missing: apt-get install iproute2 iptables"
            );
        }
        let id = exploder_common::job::new_job_id()[..6].to_string();
        let hub = format!("xp{id}-hub");
        let lab = Lab {
            id,
            hub: hub.clone(),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        lab
    }

    /// A new host called `label`, on the hub.
    pub fn host(&mut self, label: &str) -> Host {
        let n = self.hosts.len() + 1;
        assert!(n < 250, "a /24 holds 250 hosts");
        let netns = format!("xp{}-{label}", self.id);
        let hub_if = format!("xp{}h{n}", self.id);
        let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], n as u8);
        ip(&["netns", "add", &netns]);
        self.hosts.push(netns.clone());
        // Both ends are made where they live: no interface ever appears in
        // the root namespace.
        ip(&[
            "link", "add", "name", &hub_if, "netns", &self.hub, "type", "veth", "peer", "name",
            "eth0", "netns", &netns,
        ]);
        ip(&["-n", &self.hub, "link", "set", &hub_if, "master", "br0"]);
        ip(&["-n", &self.hub, "link", "set", &hub_if, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        Host {
            label: label.to_string(),
            netns,
            addr,
            hub: self.hub.clone(),
            hub_if,
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // What runs in a namespace keeps it alive: the daemons the test
        // started there (RabbitMQ's epmd among them) are all ours.
        for netns in self.hosts.iter().chain([&self.hub]) {
            let pids = Command::new("ip")
                .args(["netns", "pids", netns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        for netns in self.hosts.iter().chain([&self.hub]) {
            // A process just killed may hold it for a moment.
            for _ in 0..50 {
                let deleted = Command::new("ip")
                    .args(["netns", "del", netns])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if deleted {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a fault cuts a host off from.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    /// One TCP port of one address (a service).
    Service(Ipv4Addr, u16),
    /// Every host of the lab.
    Everything,
}

/// A fault in force: packets between a host and a peer are dropped, both
/// ways. Healed by [`Cut::heal`] or when dropped.
pub struct Cut {
    netns: String,
    rules: Vec<Vec<String>>,
    healed: AtomicBool,
}

impl Cut {
    /// Removes the rules: the packets flow again.
    pub fn heal(&self) {
        if self.healed.swap(true, Ordering::SeqCst) {
            return;
        }
        for rule in &self.rules {
            let mut args = vec!["-D".to_string()];
            args.extend(rule.iter().cloned());
            iptables(&self.netns, &args);
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.heal();
    }
}

impl Host {
    /// `ip netns exec <netns> <program>`: a process in this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }

    /// Runs `f` on a thread inside this host's network namespace (sockets
    /// it opens, and processes it starts, are in the host).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter();
                    f()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Moves the calling thread into this host's network namespace.
    fn enter(&self) {
        let path = Path::new("/run/netns").join(&self.netns);
        let ns =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {}: {e}", self.netns));
    }

    /// Drops every packet between this host and `peer`, both ways: a
    /// blackhole (no reset), until healed.
    pub fn cut(&self, peer: Peer) -> Cut {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<String>>();
        let rules = match peer {
            Peer::Service(addr, port) => {
                let (addr, port) = (addr.to_string(), port.to_string());
                vec![
                    s(&[
                        "OUTPUT", "-d", &addr, "-p", "tcp", "--dport", &port, "-j", "DROP",
                    ]),
                    s(&[
                        "INPUT", "-s", &addr, "-p", "tcp", "--sport", &port, "-j", "DROP",
                    ]),
                ]
            }
            Peer::Everything => vec![
                s(&["OUTPUT", "-o", "eth0", "-j", "DROP"]),
                s(&["INPUT", "-i", "eth0", "-j", "DROP"]),
            ],
        };
        for rule in &rules {
            let mut args = vec!["-A".to_string()];
            args.extend(rule.iter().cloned());
            iptables(&self.netns, &args);
        }
        Cut {
            netns: self.netns.clone(),
            rules,
            healed: AtomicBool::new(false),
        }
    }

    /// Caps what this host receives from TCP port `port` (of any host) at
    /// `bytes_per_sec`, with an htb qdisc on the hub's end of its leg;
    /// the rest of its traffic (heartbeats, Redis) is not held behind it.
    pub fn throttle_from(&self, port: u16, bytes_per_sec: u64) {
        let rate = format!("{}bit", bytes_per_sec * 8);
        let dev = self.hub_if.as_str();
        let port = port.to_string();
        for args in [
            vec![
                "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20",
            ],
            vec![
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate",
                &rate, "ceil", &rate,
            ],
            vec![
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate",
                "10gbit",
            ],
            vec![
                "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "sport", &port, "0xffff", "flowid", "1:10",
            ],
        ] {
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", &self.hub, "tc"])
                    .args(args),
            );
        }
    }

    /// Bytes this host has received on its leg so far.
    pub fn rx_bytes(&self) -> u64 {
        let out = run_ok(Command::new("ip").args([
            "-j",
            "-s",
            "-n",
            &self.netns,
            "link",
            "show",
            "dev",
            "eth0",
        ]));
        let links: serde_json::Value = serde_json::from_slice(&out).expect("ip -j output");
        links[0]["stats64"]["rx"]["bytes"]
            .as_u64()
            .expect("rx bytes in ip -j -s link")
    }

    /// `GET http://<addr><path>` from this host: the status and the body,
    /// or why there is none (a short deadline: a daemon's probe endpoint).
    pub fn http_get(&self, addr: &str, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://{addr}{path}");
        self.run(|| {
            let agent = ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build(),
            );
            let mut response = agent.get(&url).call().map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .read_to_string()
                .map_err(|e| e.to_string())?;
            Ok((status, body))
        })
    }

    /// Waits until something accepts TCP connections on `addr` (from this
    /// host), at most `within`; panics with `what` otherwise.
    pub fn wait_listening(&self, addr: std::net::SocketAddr, within: Duration, what: &str) {
        self.run(|| {
            let start = Instant::now();
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
                assert!(
                    start.elapsed() < within,
                    "{what} does not listen on {addr} after {within:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    }
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

fn iptables(netns: &str, args: &[String]) {
    // -w: wait for the xtables lock rather than fail beside another user.
    run_ok(
        Command::new("ip")
            .args(["netns", "exec", netns, "iptables", "-w"])
            .args(args),
    );
}

/// Runs `cmd`, panicking with its output unless it succeeded; its stdout.
fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A RabbitMQ node of a test's own in a host, listening on the host's
/// address (port 5672: the namespace is the test's alone). Starts in a few
/// seconds; stopped on drop (and killed with the lab's namespaces).
pub struct Rabbit {
    host: Host,
    node: String,
    /// Holds its config, database and logs.
    dir: tempfile::TempDir,
}

impl Rabbit {
    pub const PORT: u16 = 5672;

    pub fn start(host: &Host) -> Rabbit {
        let dir = tempfile::Builder::new()
            .prefix("rabbit-")
            .tempdir()
            .unwrap();
        let node = format!("{}@localhost", host.netns);
        // The guest account may log in from elsewhere than loopback.
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = {}:{}\nloopback_users = none\n",
                host.addr,
                Self::PORT
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("plugins"), "[].\n").unwrap();
        // The Debian wrapper runs the node as the rabbitmq user.
        run_ok(
            Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(dir.path()),
        );
        let d = dir.path();
        let status = host
            .command("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        let rabbit = Rabbit {
            host: host.clone(),
            node,
            dir,
        };
        host.wait_listening(
            (host.addr, Self::PORT).into(),
            Duration::from_secs(90),
            &format!(
                "RabbitMQ (logs in {})",
                rabbit.dir.path().join("log").display()
            ),
        );
        rabbit
    }

    /// `amqp://guest:guest@<addr>:5672/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}:{}/%2f", self.host.addr, Self::PORT)
    }

    /// `rabbitmqctl -q -n <node> ARGS` in its host; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = run_ok(
            self.host
                .command("rabbitmqctl")
                .args(["-q", "-n", &self.node])
                .args(args),
        );
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // Best effort: the lab kills whatever is left in the namespace.
        if let Ok(mut stop) = self
            .host
            .command("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            let start = Instant::now();
            while stop.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = stop.kill();
                    let _ = stop.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A redis-server of a test's own in a host, on the host's address (port
/// 6379); killed on drop.
pub struct Redis {
    host: Host,
    child: std::process::Child,
}

impl Redis {
    pub const PORT: u16 = 6379;

    pub fn start(host: &Host) -> Redis {
        let child = host
            .command("redis-server")
            .args(["--bind", &host.addr.to_string()])
            .args(["--port", &Self::PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let redis = Redis {
            host: host.clone(),
            child,
        };
        host.wait_listening(
            (host.addr, Self::PORT).into(),
            Duration::from_secs(20),
            "redis-server",
        );
        redis
    }

    /// `redis://<addr>:6379/0`.
    pub fn url(&self) -> String {
        format!("redis://{}:{}/0", self.host.addr, Self::PORT)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
