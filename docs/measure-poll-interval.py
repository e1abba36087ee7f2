#!/usr/bin/env python3
"""The poll interval each device gets on a two-device KSTAR bus at 9600 baud.

The real binary (`run`) against `simulate device --unit 1,2 --wire-time` on a socat pty pair;
the interval is the time between two commits of a region, from its age in /status sampled
every 50 ms. Usage (after `cargo build --release`): docs/measure-poll-interval.py [UNITS] [SECONDS]
e.g. `1,2 60` (both answer) or `1 60` (unit 2 absent). Starts and stops everything it runs.
"""
import json, os, signal, subprocess, sys, tempfile, time, urllib.request, statistics, socket
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("AIRBRIDGE", os.path.join(REPO, "target/release/airbridge"))
units = sys.argv[1] if len(sys.argv) > 1 else "1,2"
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 60
d = tempfile.mkdtemp(prefix="airbridge-poll-interval-")
for f in ("gw", "dev"):
    try: os.remove(f"{d}/{f}")
    except FileNotFoundError: pass
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
s = socket.socket(); s.bind(("127.0.0.1", 0)); tport = s.getsockname()[1]; s.close()
cfg = f"""rtu_poll: {{device: {d}/gw, baud: 9600, timeout: 500ms, gap: 20ms, retries: 1, offline_after: 3, probe_max: 30s}}
tcp_server: {{listen: '127.0.0.1:{tport}'}}
status: {{listen: '127.0.0.1:{port}'}}
devices:
  - name: battery1
    unit_id: 1
    profile: {REPO}/profiles/kstar-hybrid.yaml
    regions:
      - {{name: live,     start: 3000, count: 125, function: input, every: 1s, max_age: 10s}}
      - {{name: settings, start: 3125, count: 125, function: input, every: 5s, max_age: 30s}}
  - name: battery2
    unit_id: 2
    profile: {REPO}/profiles/kstar-hybrid.yaml
    regions:
      - {{name: live,     start: 3000, count: 125, function: input, every: 1s, max_age: 10s}}
      - {{name: settings, start: 3125, count: 125, function: input, every: 5s, max_age: 30s}}
"""
open(f"{d}/cfg.yaml", "w").write(cfg)
procs = []
try:
    procs.append(subprocess.Popen(["socat", f"pty,raw,echo=0,link={d}/gw", f"pty,raw,echo=0,link={d}/dev"]))
    for _ in range(50):
        if os.path.exists(f"{d}/gw") and os.path.exists(f"{d}/dev"): break
        time.sleep(0.1)
    procs.append(subprocess.Popen([BIN, "simulate", "device", "--profile", f"{REPO}/profiles/kstar-hybrid.yaml",
        "--device", f"{d}/dev", "--unit", units, "--baud", "9600", "--wire-time"], stdout=subprocess.DEVNULL))
    procs.append(subprocess.Popen([BIN, "run", "--config", f"{d}/cfg.yaml"], stdout=subprocess.DEVNULL, stderr=open(f"{d}/gw.log", "w")))
    time.sleep(8)  # warm up: first fills
    commits = {}
    t_end = time.monotonic() + secs
    while time.monotonic() < t_end:
        try:
            st = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2))
        except Exception:
            time.sleep(0.05); continue
        now = time.monotonic()
        for dev in st["upstream"]["rtu_poll"].get("devices", []):
            for r in dev["regions"]:
                if r["age_s"] is None: continue
                c = round(now - r["age_s"], 3)
                lst = commits.setdefault(r["name"], [])
                if not lst or abs(c - lst[-1]) > 0.3: lst.append(c)
        time.sleep(0.05)
    print(f"units answering: {units}; {secs:.0f} s sampled")
    print("| region | configured | polls | mean | p50 | p99 | max |")
    print("|---|---|---|---|---|---|---|")
    for name, lst in sorted(commits.items()):
        iv = sorted((b - a) * 1000 for a, b in zip(lst, lst[1:]))
        if not iv: print(f"| {name} | | 0 | | | | |"); continue
        p = lambda q: iv[min(len(iv) - 1, int(q * len(iv)))]
        conf = "5 s" if "settings" in name else "1 s"
        print(f"| {name} | {conf} | {len(iv)} | {statistics.mean(iv):.0f} ms | {p(0.5):.0f} ms | {p(0.99):.0f} ms | {iv[-1]:.0f} ms |")
finally:
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try: p.wait(5)
        except subprocess.TimeoutExpired: p.kill()
    import shutil; shutil.rmtree(d, ignore_errors=True)
