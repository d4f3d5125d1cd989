"""How fast a change made on one cluster node is served by another.

Starts three nats-servers (one JetStream cluster, R3) and two abacus nodes
on loopback, creates an experiment on node 0, then 30 times patches it on
node 1 and polls node 0 until it serves the new name. Prints the patch's
own latency and the time from its answer until node 0 serves it.

    python3 load/cluster/propagation.py BIN [NATS_SERVER]

BIN is a release abacus; NATS_SERVER defaults to .tools/bin/nats-server
(installed by `make test` or `make cluster`). Loopback only, 30 changes.
"""
import subprocess, sys, time, json, urllib.request, tempfile, os, statistics
d=tempfile.mkdtemp(); ab=sys.argv[1]; ns=sys.argv[2] if len(sys.argv)>2 else os.path.join(os.path.dirname(__file__),"../../.tools/bin/nats-server")
procs=[]
routes=",".join(f"nats://127.0.0.1:{16222+i}" for i in range(3))
for i in range(3):
    procs.append(subprocess.Popen([ns,"-a","127.0.0.1","-n",f"n{i}","-js","-sd",f"{d}/js{i}","-p",str(14222+i),"--cluster_name","p","--cluster",f"nats://127.0.0.1:{16222+i}","--routes",routes],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL))
time.sleep(3)
urls=json.dumps([f"nats://127.0.0.1:{14222+i}" for i in range(3)])
for i in range(2):
    env=dict(os.environ, ABACUS_SERVER__BIND=f"127.0.0.1:{18800+i}", ABACUS_STORAGE__PATH=f"{d}/ab{i}", ABACUS_CLUSTER__ENABLED="true", ABACUS_CLUSTER__NATS_URLS=urls, ABACUS_CLUSTER__NODE_ID=f"node-{i}", ABACUS_CLUSTER__REPLICAS="3", RUST_LOG="warn")
    procs.append(subprocess.Popen([ab,"serve"],env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL))
def req(port,method,path,body=None):
    r=urllib.request.Request(f"http://127.0.0.1:{port}{path}",method=method,data=json.dumps(body).encode() if body is not None else None,headers={"content-type":"application/json"})
    try:
        with urllib.request.urlopen(r,timeout=5) as f: return f.status, json.loads(f.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read())
for port in (18800,18801):
    for _ in range(200):
        try:
            if req(port,"GET","/readyz")[0]==200: break
        except Exception: pass
        time.sleep(0.05)
print(req(18800,"POST","/v1/experiments",{"key":"e","name":"e0","variants":[{"key":"a","weight":1},{"key":"b","weight":1}]})[0])
time.sleep(0.5)
lat=[]; patch=[]
for n in range(1,31):
    t0=time.perf_counter(); s,b=req(18801,"PATCH","/v1/experiments/e",{"name":f"e{n}"}); t1=time.perf_counter()
    assert s==200,(s,b)
    deadline=time.perf_counter()+5
    while req(18800,"GET","/v1/experiments/e")[1]["name"]!=f"e{n}":
        assert time.perf_counter()<deadline, "not seen within 5 s"
    t2=time.perf_counter(); lat.append((t2-t1)*1000); patch.append((t1-t0)*1000)
    time.sleep(0.05)
lat.sort(); patch.sort()
print("patch on node-1 (ms): p50 %.2f max %.2f" % (statistics.median(patch), patch[-1]))
print("seen on node-0 after the answer (ms): p50 %.2f p90 %.2f max %.2f" % (statistics.median(lat), lat[int(len(lat)*0.9)], lat[-1]))
for p in procs: p.terminate()
for p in procs: p.wait()
