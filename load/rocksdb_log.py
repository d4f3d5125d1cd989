"""Per column family: what a run flushed and what compacting it cost.

Reads the EVENT_LOG_v1 records of RocksDB's LOG in an abacus data
directory: bytes handed to flushes (keys and values as written, before
compression) and entries, divided by EVENTS when given, and the CPU time
and bytes written of compactions.

    python3 load/rocksdb_log.py DATA_DIR [EVENTS]
"""
import collections
import json
import os
import re
import sys

data, events = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None
lines = open(os.path.join(data, "LOG"), errors="replace").read().splitlines()
flush_cf = {}
for line in lines:
    m = re.search(r"\[(\w+)\] \[JOB (\d+)\] Flushing memtable", line)
    if m:
        flush_cf[int(m.group(2))] = m.group(1)
flushed, entries, flushes = collections.Counter(), collections.Counter(), collections.Counter()
compaction_cf, cpu, written, jobs = {}, collections.Counter(), collections.Counter(), collections.Counter()
for line in lines:
    at = line.find("EVENT_LOG_v1")
    if at < 0:
        continue
    record = json.loads(line[at + len("EVENT_LOG_v1"):])
    kind = record.get("event")
    if kind == "flush_started":
        cf = flush_cf.get(record["job"], "?")
        flushed[cf] += record["total_data_size"]
        entries[cf] += record["total_num_input_entries"]
        flushes[cf] += 1
    elif kind == "compaction_started":
        compaction_cf[record["job"]] = record["cf_name"]
    elif kind == "compaction_finished":
        cf = compaction_cf.get(record["job"], "?")
        cpu[cf] += record.get("compaction_time_cpu_micros", 0) / 1e6
        written[cf] += record.get("total_output_size", 0)
        jobs[cf] += 1
print("flushes: family, bytes" + (" per event, entries per event" if events else "") + ", flushes")
for cf in sorted(flushed, key=lambda c: -flushed[c]):
    per = f"{flushed[cf] / events:8.1f} B {entries[cf] / events:6.2f}" if events else f"{flushed[cf]:12d}"
    print(f"  {cf:20s} {per} {flushes[cf]:5d}")
print("compactions: family, CPU seconds, MB written, jobs")
for cf in sorted(cpu, key=lambda c: -cpu[c]):
    print(f"  {cf:20s} {cpu[cf]:7.1f} {written[cf] / 1e6:9.0f} {jobs[cf]:4d}")
