"""Real servers for the tests: a process started by a test (gunicorn, `mlprod serve`, `mlprod model-server`) on a
free loopback port, waited for, and stopped by its PID."""
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    "A server started in a subprocess (by `mlprod serve`, `mlprod model-server` or gunicorn itself), stopped by its PID."
    def __init__(self, args, env, port, log):
        self.port, self.url, self.log_path = port, f"http://127.0.0.1:{port}", log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPROD_", "AIP_")) and k != "PORT"}
        full_env.update(env)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(args, env=full_env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))

    def wait(self, path="/v1/health", timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None: raise RuntimeError(f"server exited {self.proc.returncode}: {self.logs()}")
            try:
                if requests.get(self.url + path, timeout=1).status_code < 500: return self
            except requests.RequestException: pass  # not listening yet, or busy starting
            time.sleep(0.02)
        raise TimeoutError(self.logs())

    def logs(self) -> str: return Path(self.log_path).read_text(errors="replace")

    def log_lines(self) -> list:
        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]

    def worker_pids(self) -> list:
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(k) for k in kids]

    def send(self, sig=signal.SIGHUP): self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try: self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait(5)


def stop_all(servers):
    "Stop servers together: SIGTERM to each, then wait for each (gunicorn takes seconds to wind down)."
    for s in servers:
        if s.proc.poll() is None: s.proc.send_signal(signal.SIGTERM)
    for s in servers: s.stop()
