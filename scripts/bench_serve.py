"""What single hostile or careless requests cost scripts/serve.py: time, server CPU and memory.

    python scripts/bench_serve.py --save_dir out --stage sft
    python scripts/bench_serve.py --save_dir out --stage sft --serve_script /old/checkout/scripts/serve.py

Starts the server as a subprocess (any checkout's serve.py, so a before/after comparison runs the
same requests against both), sends each request of issue 14 in turn and prints, per request: the
HTTP status (or "timeout" when the client gave up), wall seconds, the server's CPU seconds
meanwhile (all its threads, from /proc), and its RSS afterwards; then how long an 8-token chat
sent right after waits, where the case is a client that leaves, and how long the server kept
working after the client had its answer or had gone. Linux only (/proc).
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS           # utime + stime, all threads


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settle(pid: int, limit: float = 400.0) -> float:
    """Seconds until the server stops working (under 0.1 CPU-s in half a second), up to `limit`:
    the work a request leaves behind after its client has its answer or has gone."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.1:
            break
    return max(time.monotonic() - started - 0.5, 0.0)


def post(port: int, body: bytes, headers=None, timeout: float = 60.0, leave_after: float | None = None):
    """(status or 'timeout'/'left'/'reset', seconds). leave_after: close the connection after that
    many seconds without reading the reply, as a client that gives up does."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=leave_after or timeout)
    try:
        connection.request("POST", "/v1/chat/completions", body=body,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        response.read()
        status = response.status
    except (socket.timeout, TimeoutError):
        status = "left" if leave_after else "timeout"
    except (ConnectionError, http.client.HTTPException):
        status = "reset"
    finally:
        connection.close()
    return status, time.monotonic() - started


def chat(messages, **fields) -> bytes:
    return json.dumps({"model": "m", "messages": messages, "max_tokens": 8, "temperature": 0, **fields},
                      ensure_ascii=False).encode()


def history(n: int):
    return [{"role": ("user", "assistant")[i % 2], "content": f"第{i}条：" + "很长的内容" * 10} for i in range(n)]


CASES = [   # name, body, extra headers, leave the request after this many seconds (None: wait)
    ("item 5: 801 messages of history", lambda: chat(history(801)), None, None),
    ("item 5: 999 messages of history", lambda: chat(history(999)), None, None),
    ("item 5: 4001 messages, client leaves after 10 s", lambda: chat(history(4001)), None, 10.0),
    ("item 6: one 20 MB message", lambda: chat([{"role": "user", "content": "很长的内容" * 1_400_000}]), None, None),
    ("item 6: 100 MB body", lambda: b'{"messages": "' + b"a" * 100_000_000 + b'"}', None, None),
    ("item 7: temperature 1e-45", lambda: chat([{"role": "user", "content": "你好"}], temperature=1e-45), None, None),
    ("item 7: repetition_penalty 1e-45",
     lambda: chat([{"role": "user", "content": "你好"}], repetition_penalty=1e-45, temperature=1.0), None, None),
    ("item 7: JSON nested 100,000 deep", lambda: b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, None),
    ("item 8: non-streaming reply of 1000 tokens, client leaves after 0.5 s",
     lambda: chat([{"role": "user", "content": "写一篇很长的文章"}], max_tokens=1000, temperature=1.0, seed=1,
                  repetition_penalty=1.0), None, 0.5),
    ("item 9: text/plain POST from another site", lambda: chat([{"role": "user", "content": "你好"}]),
     {"Content-Type": "text/plain", "Origin": "http://evil.example"}, None),
    ("item 9: DNS-rebound Host", lambda: chat([{"role": "user", "content": "你好"}]), {"Host": "evil.example"}, None),
]


def random_body(rng) -> bytes:
    """One of the shapes the fuzz test draws, at sizes up to a few MB (seeded)."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 2000))
    if kind == 1:
        return b'{"messages": ' + b"[" * rng.randrange(1, 200_000)
    if kind == 2:
        text = "很长的内容" * rng.randrange(1, 300_000)
        return chat([{"role": "user", "content": text}])
    if kind == 3:
        return chat(history(rng.randrange(1, 1200) | 1))
    if kind == 4:
        value = rng.choice([1e-45, -1, 0, 1e308, 2 ** 70, "hot", None, [], {"a": [1]}])
        return chat([{"role": "user", "content": "你好"}], **{rng.choice(["temperature", "top_p", "top_k",
                                                                       "repetition_penalty", "seed",
                                                                       "max_tokens"]): value})
    return json.dumps({"messages": [{"role": rng.choice(["user", "tool", 3]), "content": rng.random()}]}).encode()


def fuzz(port: int, pid: int, n: int, seed: int = 0) -> dict:
    import random
    rng = random.Random(seed)
    statuses, slowest = {}, {}
    before = rss_mb(pid)
    for _ in range(n):
        status, wall = post(port, random_body(rng), timeout=120)
        statuses[status] = statuses.get(status, 0) + 1
        kind = "refused" if isinstance(status, int) and status >= 400 else "answered"   # 200s include generation
        slowest[kind] = round(max(slowest.get(kind, 0.0), wall), 2)
    return dict(statuses=statuses, slowest_s=slowest, rss_before_mb=round(before), rss_mb=round(rss_mb(pid)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve_script", default=str(ROOT / "scripts" / "serve.py"))
    p.add_argument("--save_dir", default="out")
    p.add_argument("--stage", default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take before the client gives up")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--only", default="", help="run only the requests whose name contains this text")
    p.add_argument("--fuzz", type=int, default=200, help="then this many seeded random bodies (0: none)")
    p.add_argument("--serve_args", default="", help="more flags for the server, e.g. '--max_messages 5000'")
    args = p.parse_args(argv)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, args.serve_script, "--save_dir", args.save_dir, "--port", str(port),
               "--device", "cpu", "--dtype", "float32"] + (["--stage", args.stage] if args.stage else []) + args.serve_args.split()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    results = []
    try:
        deadline = time.monotonic() + 120
        while post(port, chat([{"role": "user", "content": "你好"}], max_tokens=1), timeout=5)[0] != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {' '.join(command)}")
            time.sleep(0.5)
        start_rss = rss_mb(server.pid)
        print(f"server {args.serve_script}: RSS {start_rss:.0f} MB after start")
        print(f"{'request':<72} {'status':>7} {'wall s':>7} {'CPU s':>7} {'RSS MB':>7} {'next 8-token chat s':>20} "
              f"{'busy after s':>13}")
        for name, body, headers, leave in CASES:
            if args.only not in name:
                continue
            data = body()
            cpu = cpu_seconds(server.pid)
            status, wall = post(port, data, headers, timeout=args.timeout, leave_after=leave)
            del data
            after = ""
            if leave:   # does the next short request wait behind the one that was abandoned?
                _, after = post(port, chat([{"role": "user", "content": "你好"}]), timeout=600)
            busy = settle(server.pid)
            cpu = cpu_seconds(server.pid) - cpu
            row = dict(request=name, status=status, wall_s=round(wall, 2), cpu_s=round(cpu, 2),
                       rss_mb=round(rss_mb(server.pid)), next_chat_s=round(after, 2) if after != "" else None,
                       busy_after_s=round(busy, 1))
            results.append(row)
            print(f"{name:<72} {status!s:>7} {wall:7.2f} {cpu:7.2f} {row['rss_mb']:7.0f} "
                  f"{'' if after == '' else f'{after:.2f}':>20} {busy:13.1f}", flush=True)
        if args.fuzz:
            cpu = cpu_seconds(server.pid)
            fuzzed = fuzz(port, server.pid, args.fuzz)
            fuzzed["cpu_s"] = round(cpu_seconds(server.pid) - cpu, 1)
            print(f"fuzz: {args.fuzz} seeded random bodies: statuses {fuzzed['statuses']}, slowest (s) "
                  f"{fuzzed['slowest_s']}, server CPU {fuzzed['cpu_s']} s, RSS {fuzzed['rss_before_mb']} MB before, "
                  f"{fuzzed['rss_mb']} MB after")
            results.append({"request": "fuzz", **fuzzed})
        end_rss = rss_mb(server.pid)
        print(f"RSS {start_rss:.0f} MB at start, {end_rss:.0f} MB at the end ({end_rss - start_rss:+.0f} MB)")
        if args.json:
            Path(args.json).write_text(json.dumps({"serve_script": args.serve_script, "start_rss_mb": start_rss,
                                                   "end_rss_mb": end_rss, "requests": results}, indent=2) + "\n")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
