//! A JetStream cluster of real `nats-server` processes on loopback ports,
//! each with its own temporary store, killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, TestServer};

/// `$NATS_SERVER` if set (to try another version), else the
/// `nats-server` the bootstrap installed (a version whose clustered
/// compare-and-set holds), else the one on the PATH.
fn nats_server() -> std::path::PathBuf {
    if let Some(chosen) = std::env::var_os("NATS_SERVER") {
        return chosen.into();
    }
    let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/nats-server");
    if installed.exists() {
        installed
    } else {
        "nats-server".into()
    }
}

/// One `nats-server` of the cluster.
struct Node {
    child: Child,
    client_port: u16,
    monitor_port: u16,
}

/// `size` `nats-server`s routed to each other, JetStream on.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts the servers and waits until every one knows the JetStream
    /// meta leader (so streams can be created with `size` replicas).
    ///
    /// The ports are found free a moment before the servers bind them, so
    /// on a busy machine another test can take one in between and a server
    /// exits: a failed start is retried on fresh ports, as
    /// `TestServer::start_with` does, and the last failure shows the logs.
    pub fn start(size: usize) -> Self {
        let mut failure = String::new();
        for attempt in 0..3 {
            match Self::try_start(size) {
                Ok(cluster) => return cluster,
                Err(why) => {
                    eprintln!("attempt {attempt}: NATS cluster did not start: {why}");
                    failure = why;
                }
            }
        }
        panic!("NATS cluster did not start in three attempts; the last:\n{failure}");
    }

    fn try_start(size: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let nodes = (0..size)
            .map(|i| {
                let (client_port, monitor_port) = (free_port(), free_port());
                let routes: Vec<String> = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                    .collect();
                let log = std::fs::File::create(dir.path().join(format!("nats-{i}.log")))
                    .expect("log file");
                let child = Command::new(nats_server())
                    .args(["-a", "127.0.0.1", "-n", &format!("nats-{i}"), "-js"])
                    .args(["-p", &client_port.to_string()])
                    .args(["-m", &monitor_port.to_string()])
                    .arg("-sd")
                    .arg(dir.path().join(format!("js-{i}")))
                    .args(["--cluster_name", "abacus-test"])
                    .args([
                        "--cluster",
                        &format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    ])
                    .args(["--routes", &routes.join(",")])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("log"))
                    .stderr(log)
                    .spawn()
                    .expect("nats-server (make test installs it into .tools/bin)");
                Node {
                    child,
                    client_port,
                    monitor_port,
                }
            })
            .collect();
        let mut cluster = Self { nodes, dir };
        match cluster.wait_for_a_leader() {
            Ok(()) => Ok(cluster),
            Err(why) => Err(format!("{why}\n{}", cluster.logs())),
        }
    }

    /// Waits up to 30 s for every server to name the meta leader; fails
    /// early when a server has exited.
    fn wait_for_a_leader(&mut self) -> Result<(), String> {
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, node) in self.nodes.iter_mut().enumerate() {
            loop {
                if let Ok(Some(status)) = node.child.try_wait() {
                    return Err(format!("nats-{i} exited: {status}"));
                }
                let leader = client
                    .get(format!("http://127.0.0.1:{}/jsz", node.monitor_port))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .and_then(|r| r.json::<Value>())
                    .ok()
                    .and_then(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_owned));
                if leader.is_some_and(|l| !l.is_empty()) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("nats-{i}: no JetStream leader in 30 s"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The tail of every server's log, to say why a start failed.
    fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("nats-{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- nats-{i}.log (last 20 lines)\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The process id of server `index`.
    pub fn pid(&self, index: usize) -> u32 {
        self.nodes[index].child.id()
    }

    /// The servers' client URLs, as the `cluster.nats_urls` setting.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"nats://127.0.0.1:{}\"", n.client_port))
            .collect();
        format!("[{}]", urls.join(","))
    }

    /// `count` abacus nodes of this cluster, `node-1`… with every bucket
    /// on every NATS server.
    pub fn nodes(&self, count: usize) -> Vec<TestServer> {
        self.nodes_with(count, &[])
    }

    /// [`NatsCluster::nodes`] with extra `ABACUS_*` variables.
    pub fn nodes_with(&self, count: usize, env: &[(&str, &str)]) -> Vec<TestServer> {
        (1..=count)
            .map(|i| self.abacus_with(&format!("node-{i}"), self.nodes.len(), env))
            .collect()
    }

    /// An abacus node of this cluster named `node_id`, with `replicas`
    /// replicas of its buckets.
    pub fn abacus(&self, node_id: &str, replicas: usize) -> TestServer {
        self.abacus_with(node_id, replicas, &[])
    }

    /// [`NatsCluster::abacus`] with extra `ABACUS_*` variables.
    pub fn abacus_with(&self, node_id: &str, replicas: usize, env: &[(&str, &str)]) -> TestServer {
        let urls = self.urls();
        let replicas = replicas.to_string();
        let mut all = vec![
            ("ABACUS_CLUSTER__ENABLED", "true"),
            ("ABACUS_CLUSTER__NATS_URLS", urls.as_str()),
            ("ABACUS_CLUSTER__NODE_ID", node_id),
            ("ABACUS_CLUSTER__REPLICAS", replicas.as_str()),
        ];
        all.extend_from_slice(env);
        TestServer::start_with(&all)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}
