"""nginx (Debian's package, installed by scripts/bootstrap.sh) terminating TLS in front of our
servers, as a real deployment puts a load balancer or an ingress there.

- ``es``: HTTPS -> the ES emulator's HTTP, and nginx checks the ``Authorization`` header: only the
  configured basic-auth user/password or API key pass; anything else gets ES's own 401 answer.
- ``grpc``: TLS with HTTP/2 -> the inference server's gRPC port (``grpc_pass``).
- ``http``: HTTPS -> the inference server's HTTP (KServe v2 REST) port.

A self-signed certificate for ``localhost`` / ``127.0.0.1`` is made with ``openssl`` per instance.
nginx runs in the foreground as a child process and is stopped by PID.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import ssl
import subprocess
import time
from pathlib import Path

from embedding_pipeline.serving.process import free_port

_CONF = """
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    client_max_body_size 100m;
    # Bodies and answers stay in memory: the workers (user nobody) cannot write under a 0700 tmp dir.
    client_body_buffer_size 100m;
    proxy_buffering off;
    map $http_authorization $credentials_ok {{
        default 0;
        "Basic {basic}" 1;
        "ApiKey {api_key}" 1;
    }}
    server {{
        listen 127.0.0.1:{es_port} ssl;
        ssl_certificate {root}/cert.pem;
        ssl_certificate_key {root}/key.pem;
        location / {{
            if ($credentials_ok = 0) {{
                add_header WWW-Authenticate 'Basic realm="security", ApiKey' always;
                return 401 '{{"error":{{"type":"security_exception",
                    "reason":"unable to authenticate (checked by nginx)"}},"status":401}}';
            }}
            proxy_pass {es_upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{grpc_port} ssl http2;
        ssl_certificate {root}/cert.pem;
        ssl_certificate_key {root}/key.pem;
        location / {{ grpc_pass grpc://{grpc_upstream}; }}
    }}
    server {{
        listen 127.0.0.1:{http_port} ssl;
        ssl_certificate {root}/cert.pem;
        ssl_certificate_key {root}/key.pem;
        location / {{
            proxy_pass http://{http_upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class NginxTls:
    """``with NginxTls(tmp, es_url, server, (user, password, api_key)) as tls: tls.es_url``; ``server``
    is the inference server's ``(host, grpc_port, http_port)``."""

    def __init__(
        self, root: Path, es_upstream: str, server: tuple[str, int, int], credentials: tuple[str, str, str]
    ) -> None:
        if shutil.which("nginx") is None:
            raise RuntimeError(
                "nginx is not installed: run scripts/bootstrap.sh (apt-get install nginx-light)"
            )
        self.root = root
        user, password, api_key = credentials
        host, grpc_port, http_port = server
        self.es_port, self.grpc_port, self.http_port = free_port(), free_port(), free_port()
        self.es_url = f"https://127.0.0.1:{self.es_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.cert = root / "cert.pem"
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout", str(root / "key.pem"), "-out", str(self.cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        self.fingerprint = hashlib.sha256(der).hexdigest()
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        (root / "nginx.conf").write_text(
            _CONF.format(
                root=root,
                basic=basic,
                api_key=api_key,
                es_port=self.es_port,
                grpc_port=self.grpc_port,
                http_port=self.http_port,
                es_upstream=es_upstream,
                grpc_upstream=f"{host}:{grpc_port}",
                http_upstream=f"{host}:{http_port}",
            )
        )
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> NginxTls:
        self.process = subprocess.Popen(
            ["nginx", "-p", str(self.root), "-c", str(self.root / "nginx.conf"), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
            if (self.root / "nginx.pid").exists():
                return self
            time.sleep(0.05)
        raise RuntimeError("nginx did not start in 20 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # by PID: the master stops its workers
            self.process.wait(timeout=20)
