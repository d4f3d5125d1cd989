"""Single node against a three-node cluster, back to back, on this machine.

For each layout it starts fresh processes on loopback, runs the same
open-loop scenarios with abacus-load against the first node, and prints
each run's latency and the CPU time (utime + stime from /proc) every
process spent per event. The cluster is three nats-servers (one JetStream
cluster, R3) and three abacus nodes, six ingest partitions; after the runs
it SIGKILLs the second node and measures the takeover: from the kill until
the survivors own every partition, and the replay of the longest takeover
(`abacus_cluster_last_takeover_seconds`).

One run assigns from an experiment a client diverged (it reported a
variant the hash would not give), so every assignment depends on the
unit's first exposure: a single node reads its store; a cluster node asks
the owner of the unit's partition when that is another node (two units
in three), by request-reply.

    python3 load/cluster/figures.py BIN LOAD_BIN [NATS_SERVER] [--json]

BIN is a release abacus, LOAD_BIN a release abacus-load; NATS_SERVER
defaults to .tools/bin/nats-server. Loopback only; every run is bounded
(10 s, at most 1,000,000 requests).
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PARTITIONS = 6
# (name, abacus-load arguments, events per request)
SCENARIOS = [
    ("assign 1,000/s", ["--scenario", "assign", "--rate", "1000"], 1),
    ("ingest 1,000/s", ["--scenario", "ingest", "--rate", "1000"], 1),
    ("ingest 1,000/s ack=persisted", ["--scenario", "ingest", "--rate", "1000", "--ack", "persisted"], 1),
    ("batches of 100, 100/s (10,000 events/s)", ["--scenario", "ingest-batch", "--rate", "100", "--batch", "100"], 100),
]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as f:
        return f.read().decode()


def post(port, path, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="POST",
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as f:
        return json.loads(f.read().decode() or "null")


def diverged_experiment(port):
    """A running experiment a client diverged, through the node on `port`."""
    key = "diverged"
    post(port, "/v1/experiments", {"key": key, "name": key, "variants": [
        {"key": "control", "weight": 1}, {"key": "treatment", "weight": 1}]})
    post(port, f"/v1/experiments/{key}/start")
    hashed = json.loads(get(port, f"/v1/experiments/{key}/assignment?unit_id=reporter&log_exposure=false"))
    other = "treatment" if hashed["variant"] == "control" else "control"
    post(port, "/v1/events?ack=persisted", {"events": [
        {"type": "exposure", "unit_id": "reporter", "experiment": key, "variant": other}]})
    time.sleep(1)  # every node follows the divergence
    return key


def wait_ready(port):
    for _ in range(400):
        try:
            get(port, "/readyz")
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"node on {port} never became ready")


def gauge(port, name):
    for line in get(port, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


class Layout:
    def __init__(self, binary, nats, nodes, tmp):
        self.procs = {}
        env_base = dict(os.environ, RUST_LOG="warn", ABACUS_INGEST__PARTITIONS=str(PARTITIONS))
        urls = json.dumps([f"nats://127.0.0.1:{24222 + i}" for i in range(3)])
        if nats:
            routes = ",".join(f"nats://127.0.0.1:{26222 + i}" for i in range(3))
            for i in range(3):
                self.procs[f"nats-{i}"] = subprocess.Popen(
                    [nats, "-a", "127.0.0.1", "-n", f"n{i}", "-js", "-sd", f"{tmp}/js{i}",
                     "-p", str(24222 + i), "--cluster_name", "figures",
                     "--cluster", f"nats://127.0.0.1:{26222 + i}", "--routes", routes],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)
        self.ports = []
        for i in range(nodes):
            port = 28800 + i
            env = dict(env_base, ABACUS_SERVER__BIND=f"127.0.0.1:{port}",
                       ABACUS_STORAGE__PATH=f"{tmp}/ab{i}")
            if nats:
                env.update(ABACUS_CLUSTER__ENABLED="true", ABACUS_CLUSTER__NATS_URLS=urls,
                           ABACUS_CLUSTER__NODE_ID=f"node-{i}", ABACUS_CLUSTER__REPLICAS="3")
            self.procs[f"abacus-{i}"] = subprocess.Popen(
                [binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.ports.append(port)
        for port in self.ports:
            wait_ready(port)
        time.sleep(2 if nats else 0.2)  # leases settle

    def cpu(self):
        return {name: cpu_seconds(p.pid) for name, p in self.procs.items() if p.poll() is None}

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            p.wait()


def run(load, layout, args, per_request):
    before = layout.cpu()
    out = subprocess.run(
        [load, "--url", f"http://127.0.0.1:{layout.ports[0]}", "--duration", "10s", "--json", *args],
        capture_output=True, text=True, check=True).stdout
    after = layout.cpu()
    report = json.loads(out)
    events = max(report["ok"] * per_request, 1)
    cpu = {k: (after[k] - before[k]) * 1e6 / events for k in after}
    return report, cpu


def takeover(layout):
    victim = layout.procs["abacus-1"]
    survivors = [layout.ports[0], layout.ports[2]]
    killed = time.perf_counter()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    while sum(gauge(p, "abacus_cluster_partitions_owned") for p in survivors) < PARTITIONS:
        if time.perf_counter() - killed > 60:
            raise SystemExit("the survivors never owned every partition")
        time.sleep(0.02)
    owned = time.perf_counter() - killed
    time.sleep(1)
    replay = max(gauge(p, "abacus_cluster_last_takeover_seconds") for p in survivors)
    return owned, replay


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    binary, load = args[0], args[1]
    nats = args[2] if len(args) > 2 else os.path.join(HERE, "../../.tools/bin/nats-server")
    results = {}
    for name, (with_nats, nodes) in {"single node": (None, 1), "cluster (3 nodes, R3)": (nats, 3)}.items():
        with tempfile.TemporaryDirectory() as tmp:
            layout = Layout(binary, with_nats, nodes, tmp)
            try:
                rows = []
                key = diverged_experiment(layout.ports[0])
                lookups = ("assign 1,000/s, diverged (first exposures looked up)",
                           ["--scenario", "assign", "--rate", "1000", "--experiment", key], 1)
                for title, scenario, per_request in [*SCENARIOS, lookups]:
                    report, cpu = run(load, layout, scenario, per_request)
                    rows.append({"scenario": title, "latency_ms": report["latency_ms"],
                                 "ok": report["ok"], "errors": report["http_errors"] + report["io_errors"],
                                 "cpu_us_per_event": cpu})
                entry = {"runs": rows}
                if with_nats:
                    entry["lookups"] = {
                        outcome: gauge(layout.ports[0], f'abacus_cluster_lookups_total{{outcome="{outcome}"}}')
                        for outcome in ("answered", "failed")}
                    entry["takeover_s"] = dict(zip(["all_partitions_owned", "replay"], takeover(layout)))
                results[name] = entry
            finally:
                layout.stop()
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
        return
    for name, entry in results.items():
        print(f"## {name}")
        for row in entry["runs"]:
            lat = row["latency_ms"]
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(row["cpu_us_per_event"].items()))
            print(f"{row['scenario']}: ok {row['ok']} errors {row['errors']} "
                  f"p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} p99.9 {lat['p999']:.2f} ms; "
                  f"CPU µs/event: {cpu}")
        if "lookups" in entry:
            print(f"first exposures asked of another node by node 0: answered {entry['lookups']['answered']:.0f}, "
                  f"failed (answered from the hash) {entry['lookups']['failed']:.0f}")
        if "takeover_s" in entry:
            t = entry["takeover_s"]
            print(f"takeover after SIGKILL: every partition owned after {t['all_partitions_owned']:.2f} s; "
                  f"longest replay {t['replay'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
