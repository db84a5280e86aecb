#!/usr/bin/env python3
"""Concurrency check for mock-upstream (or anything speaking its API).

Opens N connections at once, each sends one chat completion (non-stream or
stream), reads the whole answer and validates it.  While the requests are in
flight it samples the server's thread count from /proc/PID/status.

  loadcheck.py --port P --pid PID -n 10000 [--stream] [--timeout 60]

Exit status 0 when every request succeeded.
"""
import argparse
import asyncio
import json
import os
import sys
import time


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Threads", "VmRSS"):
                    out[k] = v.strip()
    except OSError:
        pass
    return out


async def one(host, port, body, stream, timeout):
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode() + body
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        w.write(req)
        await w.drain()
        data = await asyncio.wait_for(r.read(), timeout)
        w.close()
    except Exception as e:  # noqa: BLE001
        return f"io: {type(e).__name__} {e}"
    head, _, payload = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return "status: " + head.split(b"\r\n", 1)[0].decode(errors="replace")
    if stream:
        if b"data: [DONE]" not in payload or b'"finish_reason":"stop"' not in payload:
            return "stream incomplete"
        return None
    try:
        doc = json.loads(payload)
        if not doc["choices"][0]["message"]["content"].startswith("Mock answer"):
            return "bad content"
    except Exception as e:  # noqa: BLE001
        return f"bad json: {e}"
    return None


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, default=0)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()

    body = json.dumps({"messages": [{"role": "user", "content": "load test"}],
                       "stream": a.stream}).encode()
    max_threads = 0
    samples = []

    async def sampler():
        nonlocal max_threads
        while True:
            st = proc_status(a.pid) if a.pid else {}
            if "Threads" in st:
                max_threads = max(max_threads, int(st["Threads"]))
                samples.append(st)
            await asyncio.sleep(0.2)

    s = asyncio.create_task(sampler())
    t0 = time.monotonic()
    res = await asyncio.gather(*(one(a.host, a.port, body, a.stream, a.timeout)
                                 for _ in range(a.n)))
    dt = time.monotonic() - t0
    s.cancel()
    errs = [e for e in res if e]
    print(f"{a.n - len(errs)}/{a.n} ok in {dt:.2f}s  stream={a.stream}  "
          f"max_threads={max_threads}  last={samples[-1] if samples else {}}")
    if errs:
        kinds = {}
        for e in errs:
            kinds[e] = kinds.get(e, 0) + 1
        print("errors:", dict(list(kinds.items())[:5]))
    return 1 if errs else 0


if __name__ == "__main__":
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(asyncio.run(main()))
