#!/usr/bin/env python3
"""Runs the replayed image's binary the way the container would, with the
embedded Kafka broker instead of a real one, and checks what the packaging
relies on (run by deploy/check.sh):

    smoke.py SUMMARY_JSON ROOT WORK

image mode   ENTRYPOINT + Dockerfile ENV (ports moved to free ones, the
             certificate directory moved into WORK): the HEALTHCHECK command
             succeeds, /readyz turns 200, logs are JSON lines, development
             certificates are generated where the ENV points, MQTT CONNECT and
             a QoS 1 PUBLISH are acknowledged (routed to Kafka), and on
             STOPSIGNAL /readyz turns 503 before the process exits 0.
compose mode ENTRYPOINT + Dockerfile ENV + the compose proxy-1 environment,
             with certificates made by deploy/compose/gen-dev-certs.sh: with
             PROXY protocol v2 headers (as HAProxy's send-proxy-v2 sends them)
             MQTT over TCP and over TLS (verified against the generated CA, for
             the names localhost and proxy-1) are acknowledged; a connection
             without the header is refused; SIGTERM exits 0.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

FAILS = []


def fail(msg):
    FAILS.append(msg)
    print(f"FAIL: {msg}", flush=True)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def http_status(port, path, timeout=2.0):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return None, ""


def wait_for(pred, timeout, interval=0.2):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return None


def mqtt_connect_packet(client_id):
    cid = client_id.encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = struct.pack("!H", len(cid)) + cid
    body = var + payload
    return bytes([0x10, len(body)]) + body


def mqtt_publish_qos1(topic, payload, pid=1):
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", pid) + payload
    assert len(body) < 128
    return bytes([0x32, len(body)]) + body


def proxy_v2_header(src_ip, src_port, dst_ip, dst_port):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addrs = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip) + struct.pack("!HH", src_port, dst_port)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


def recv_exact(sock, n, timeout=10):
    sock.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def mqtt_session(sock, label, client_id):
    """CONNECT -> CONNACK 0, PUBLISH QoS 1 -> PUBACK."""
    sock.sendall(mqtt_connect_packet(client_id))
    ack = recv_exact(sock, 4)
    if ack != b"\x20\x02\x00\x00":
        fail(f"{label}: CONNACK expected, got {ack!r}")
        return False
    sock.sendall(mqtt_publish_qos1(f"devices/{client_id}/events/smoke", b"21.5", pid=7))
    puback = recv_exact(sock, 4, timeout=30)
    if puback != b"\x40\x02\x00\x07":
        fail(f"{label}: PUBACK for packet 7 expected (record in Kafka), got {puback!r}")
        return False
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    ok(f"{label}: CONNECT acknowledged, QoS 1 PUBLISH routed and acknowledged")
    return True


class Proxy:
    def __init__(self, summary, env, cwd, log_path):
        ep = list(summary["entrypoint"])
        args = ep[1:]
        if "--config" in args:
            i = args.index("--config")
            args[i + 1] = summary["config"]
        self.cmd = [summary["binary"]] + args
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.p = subprocess.Popen(self.cmd, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig, timeout):
        if self.alive():
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None
        finally:
            self.log.close()

    def lines(self):
        with open(self.log_path) as f:
            return f.read().splitlines()


def base_env(summary, ports, kafka_port, extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(summary["env"])
    env.update(extra)
    tcp, tls, ws, wss, ops = ports
    env.update({
        "MQTT_KAFKA_PROXY__LISTENERS__TCP__BIND": f"127.0.0.1:{tcp}",
        "MQTT_KAFKA_PROXY__LISTENERS__TLS__BIND": f"127.0.0.1:{tls}",
        "MQTT_KAFKA_PROXY__LISTENERS__WS__BIND": f"127.0.0.1:{ws}",
        "MQTT_KAFKA_PROXY__LISTENERS__WSS__BIND": f"127.0.0.1:{wss}",
        "MQTT_KAFKA_PROXY__OPS__BIND": f"127.0.0.1:{ops}",
        "MQTT_KAFKA_PROXY__KAFKA__BOOTSTRAP_SERVERS": "embedded",
        "MQTT_KAFKA_PROXY__KAFKA__EMBEDDED__LISTEN": f"127.0.0.1:{kafka_port}",
    })
    return env


def image_mode(summary, work):
    print("== image mode", flush=True)
    tcp, tls, ws, wss, ops, kport = free_ports(6)
    cwd = os.path.join(work, "image-workdir")
    shutil.rmtree(cwd, ignore_errors=True)
    os.makedirs(cwd)
    certdir = os.path.join(cwd, "certs")
    env_cert = summary["env"].get("MQTT_KAFKA_PROXY__LISTENERS__TLS__CERT_PATH", "")
    env = base_env(summary, (tcp, tls, ws, wss, ops), kport, {
        # The image's /var/lib/mqtt-kafka-proxy/certs, relocated.
        "MQTT_KAFKA_PROXY__LISTENERS__TLS__CERT_PATH": os.path.join(certdir, os.path.basename(env_cert) or "server.crt"),
        "MQTT_KAFKA_PROXY__LISTENERS__TLS__KEY_PATH": os.path.join(certdir, "server.key"),
        "MQTT_KAFKA_PROXY__SHUTDOWN__READINESS_GRACE_MS": "2000",
        "MQTT_KAFKA_PROXY__SHUTDOWN__DRAIN_TIMEOUT_MS": "5000",
    })
    proxy = Proxy(summary, env, cwd, os.path.join(work, "image-mode.log"))
    try:
        hc = summary.get("healthcheck")
        if not hc:
            fail("Dockerfile has no HEALTHCHECK")
        else:
            cmd = [c.replace("9090", str(ops)) for c in hc["cmd"]]

            def healthy():
                if not proxy.alive():
                    return "dead"
                r = subprocess.run(cmd, capture_output=True, timeout=5)
                return r.returncode == 0

            h = wait_for(healthy, 60, 0.5)
            if h is True:
                ok(f"HEALTHCHECK command succeeds against the running proxy ({' '.join(hc['cmd'][:2])} ...)")
            else:
                fail("HEALTHCHECK command never succeeded" + (" (proxy exited)" if h == "dead" else ""))
                return
            # And fails when nothing listens (so it can detect a dead process).
            dead_port = free_ports(1)[0]
            r = subprocess.run([c.replace("9090", str(dead_port)) for c in hc["cmd"]], capture_output=True, timeout=5)
            if r.returncode == 0:
                fail("HEALTHCHECK command succeeds even with nothing listening")
            else:
                ok("HEALTHCHECK command fails when nothing listens")
        if wait_for(lambda: http_status(ops, "/readyz")[0] == 200, 60):
            ok("/readyz answers 200 (embedded Kafka reachable)")
        else:
            fail(f"/readyz never answered 200: {http_status(ops, '/readyz')}")
        status, body = http_status(ops, "/metrics")
        if status == 200 and "proxy_ready 1" in body:
            ok("/metrics serves proxy_ready 1")
        else:
            fail(f"/metrics: status {status}, proxy_ready 1 not found")
        missing = [f for f in ("server.crt", "server.key", "ca.crt")
                   if not os.path.exists(os.path.join(certdir, f))]
        if missing:
            fail(f"development certificates {missing} not generated in the ENV's certificate directory")
        else:
            ok("development certificates generated in the ENV's certificate directory")
        with socket.create_connection(("127.0.0.1", tcp), timeout=5) as s:
            mqtt_session(s, "image mode MQTT/TCP", "smoke-image")
        ctx = ssl.create_default_context(cafile=os.path.join(certdir, "ca.crt"))
        with socket.create_connection(("127.0.0.1", tls), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                mqtt_session(s, "image mode MQTT/TLS (dev CA)", "smoke-image-tls")
        # Graceful stop: readiness first, then exit 0.
        sig = getattr(signal, summary.get("stopsignal") or "SIGTERM")
        proxy.p.send_signal(sig)
        if wait_for(lambda: http_status(ops, "/readyz")[0] == 503, 2, 0.05):
            ok("after STOPSIGNAL /readyz answers 503 during readiness_grace_ms")
        else:
            fail("after STOPSIGNAL /readyz did not turn 503")
        rc = proxy.stop(sig, 20)
        if rc == 0:
            ok("exits 0 after a graceful drain")
        else:
            fail(f"exit status after {summary.get('stopsignal')}: {rc}")
    finally:
        if proxy.alive():
            proxy.stop(signal.SIGKILL, 5)
    lines = [l for l in proxy.lines() if l.strip()]
    bad = []
    for l in lines:
        try:
            json.loads(l)
        except ValueError:
            bad.append(l)
    if not lines:
        fail("no log output")
    elif bad:
        fail(f"{len(bad)} of {len(lines)} log lines are not JSON, e.g. {bad[0][:200]!r}")
    else:
        ok(f"all {len(lines)} log lines are JSON objects (MQTT_KAFKA_PROXY__LOG__FORMAT=json)")


def compose_mode(summary, root, work, compose_env):
    print("== compose mode", flush=True)
    tcp, tls, ws, wss, ops, kport = free_ports(6)
    cwd = os.path.join(work, "compose-workdir")
    shutil.rmtree(cwd, ignore_errors=True)
    os.makedirs(cwd)
    certdir = os.path.join(cwd, "tls")
    if shutil.which("openssl") is None:
        print("SKIP: compose mode needs openssl for gen-dev-certs.sh")
        return
    r = subprocess.run(["sh", os.path.join(root, "deploy/compose/gen-dev-certs.sh"), certdir],
                       capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"gen-dev-certs.sh failed: {r.stderr[-500:]}")
        return
    r2 = subprocess.run(["sh", os.path.join(root, "deploy/compose/gen-dev-certs.sh"), certdir],
                        capture_output=True, text=True)
    if r2.returncode != 0 or "keeping them" not in r2.stdout:
        fail("gen-dev-certs.sh is not idempotent")
    ok("gen-dev-certs.sh generated a CA and server certificate (and keeps them on a re-run)")
    extra = dict(compose_env)
    mount = "/etc/mqtt-kafka-proxy/tls"
    for k, v in list(extra.items()):
        if v.startswith(mount + "/"):
            extra[k] = os.path.join(certdir, v[len(mount) + 1:])
    extra["MQTT_KAFKA_PROXY__SHUTDOWN__READINESS_GRACE_MS"] = "500"
    extra["MQTT_KAFKA_PROXY__SHUTDOWN__DISCONNECT_SPREAD_MS"] = "500"
    extra["MQTT_KAFKA_PROXY__SHUTDOWN__DRAIN_TIMEOUT_MS"] = "5000"
    env = base_env(summary, (tcp, tls, ws, wss, ops), kport, extra)
    proxy = Proxy(summary, env, cwd, os.path.join(work, "compose-mode.log"))
    try:
        if not wait_for(lambda: http_status(ops, "/readyz")[0] == 200 or not proxy.alive(), 60) or not proxy.alive():
            fail("compose mode: proxy not ready; log: " + " | ".join(proxy.lines()[-5:]))
            return
        ok("compose mode: ready with the shared certificate and PROXY protocol on every listener")
        with socket.create_connection(("127.0.0.1", tcp), timeout=5) as s:
            s.sendall(proxy_v2_header("203.0.113.7", 40000, "127.0.0.1", tcp))
            mqtt_session(s, "compose mode MQTT/TCP behind PROXY v2", "smoke-tcp")
        for name in ("localhost", "proxy-1"):
            ctx = ssl.create_default_context(cafile=os.path.join(certdir, "ca.crt"))
            with socket.create_connection(("127.0.0.1", tls), timeout=5) as raw:
                raw.sendall(proxy_v2_header("203.0.113.8", 40001, "127.0.0.1", tls))
                with ctx.wrap_socket(raw, server_hostname=name) as s:
                    mqtt_session(s, f"compose mode MQTT/TLS behind PROXY v2 (verified as {name})", f"smoke-tls-{name}")
        with socket.create_connection(("127.0.0.1", tcp), timeout=5) as s:
            s.sendall(mqtt_connect_packet("no-proxy-header"))
            try:
                got = recv_exact(s, 4, timeout=15)
            except ConnectionResetError:
                got = b""
            if got.startswith(b"\x20"):
                fail("compose mode: a connection without a PROXY header got a CONNACK")
            else:
                ok("compose mode: a connection without a PROXY header is refused")
        rc = proxy.stop(signal.SIGTERM, 20)
        if rc == 0:
            ok("compose mode: exits 0 on SIGTERM")
        else:
            fail(f"compose mode: exit status {rc} on SIGTERM")
    finally:
        if proxy.alive():
            proxy.stop(signal.SIGKILL, 5)


def main():
    summary = json.load(open(sys.argv[1]))
    root, work = sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    if not summary.get("binary"):
        print("SKIP: no binary")
        sys.exit(77)
    image_mode(summary, work)
    env_file = os.path.join(work, "..", "env-sets", "compose-proxy-1.env")
    compose_env = {}
    if os.path.exists(env_file):
        for line in open(env_file):
            k, _, v = line.rstrip("\n").partition("=")
            compose_env[k] = v
    compose_mode(summary, root, work, compose_env)
    if FAILS:
        print(f"{len(FAILS)} failure(s); logs in {work}")
        sys.exit(1)


if __name__ == "__main__":
    main()
