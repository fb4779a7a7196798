"""A real Kubernetes control plane (etcd + kube-apiserver, no kubelet, no
controller-manager, no scheduler) for tests, envtest-style.

Usage::

    bin_dir = build_binaries()            # runs tools/controlplane/build.sh
    with ControlPlane(bin_dir) as cp:
        subprocess.run([cp.kubectl, "--kubeconfig", cp.kubeconfig, "get", "ns"])
        status, body = cp.request("GET", "/api/v1/namespaces/default")

Everything lives in a temporary directory and listens on free loopback ports
only. TLS material is made with the ``openssl`` CLI. Only the standard library
is used.

What is *not* there (no controller-manager): namespaces stay Terminating when
deleted, no garbage collection of ownerReferences, no default ServiceAccount
in new namespaces (the ServiceAccount admission plugin is therefore disabled by
default), no Deployment/ReplicaSet/Job controllers, no scheduler and no
kubelet (Pods stay Pending unless a test patches their status subresource).
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "controlplane" / "build.sh"

ADMIN_USER = "jiomosa-admin"
UNPRIVILEGED_USER = "jiomosa-unprivileged"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike CalledProcessError its message has stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


_built_dir: Path | None = None
_build_error: str | None = None


def built_once() -> Path:
    """``build_binaries()`` once per test run, for every conftest that needs it; a failure is
    remembered and raised again, so that each dependent test reports it without rebuilding."""
    global _built_dir, _build_error
    if _built_dir is None and _build_error is None:
        try:
            _built_dir = build_binaries()
        except (ControlPlaneError, OSError) as exc:
            _build_error = str(exc)
    if _built_dir is None:
        raise ControlPlaneError(f"building the control plane failed:\n{_build_error}")
    return _built_dir


def build_binaries(timeout: float = 1800.0) -> Path:
    """Build (or find cached) kube-apiserver, etcd and kubectl.

    ``$JIOMOSA_CONTROLPLANE_BIN`` short-cuts this with a ready directory.
    Returns the directory that holds the binaries.
    """
    preset = os.environ.get("JIOMOSA_CONTROLPLANE_BIN")
    if preset:
        return Path(preset)
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ControlPlaneError(f"{BUILD_SCRIPT} printed no directory")
    return Path(lines[-1])


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback TCP ports (held open together while picking)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the starting thread dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _cleanup(procs: list[subprocess.Popen[bytes]]) -> None:
    """Finalizer: last-resort stop (reverse start order)."""
    for proc in reversed(procs):
        _stop_process(proc, grace=5.0)


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with RBAC on.

    Attributes available after :meth:`start`:

    * ``url`` -- ``https://127.0.0.1:<port>``
    * ``token`` -- bearer token of ``jiomosa-admin`` (group ``system:masters``)
    * ``unprivileged_token`` -- bearer token of ``jiomosa-unprivileged``
      (only ``system:authenticated``; no RBAC grants)
    * ``tokens`` -- user name -> static token, for every user in the token file
    * ``ca_file`` -- CA that signed the serving cert (and client certs)
    * ``kubeconfig`` -- admin kubeconfig (JSON, which is valid YAML)
    * ``kubectl`` -- kubectl binary (the one built next to the apiserver if
      present, else ``$KUBECTL`` or the one on PATH)
    * ``etcd_url``, ``workdir``, ``bin_dir``
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike[str],
        *,
        startup_timeout: float = 90.0,
        users: Mapping[str, Sequence[str]] | None = None,
        disable_admission_plugins: Sequence[str] = ("ServiceAccount",),
        extra_apiserver_args: Sequence[str] = (),
        workdir: str | os.PathLike[str] | None = None,
        keep_workdir: bool | None = None,
    ) -> None:
        """
        :param bin_dir: directory with ``kube-apiserver`` and ``etcd``.
        :param startup_timeout: seconds for both processes to become ready.
        :param users: extra static-token users: name -> groups. Their tokens
            end up in ``tokens[name]``.
        :param disable_admission_plugins: ServiceAccount by default: without
            a controller-manager no ``default`` ServiceAccount exists, and the
            plugin would refuse every Pod that does not name an existing one.
        :param extra_apiserver_args: appended to the kube-apiserver flags.
        :param workdir: where to put data, certs and logs (default: a new
            temporary directory, removed on stop).
        :param keep_workdir: keep the directory after stop (default: when
            ``$JIOMOSA_KEEP_CONTROLPLANE`` is set).
        """
        self.bin_dir = Path(bin_dir)
        self.startup_timeout = startup_timeout
        self.disable_admission_plugins = list(disable_admission_plugins)
        self.extra_apiserver_args = list(extra_apiserver_args)
        self._own_workdir = workdir is None
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.keep_workdir = (
            bool(os.environ.get("JIOMOSA_KEEP_CONTROLPLANE"))
            if keep_workdir is None
            else keep_workdir
        )

        self.host = "127.0.0.1"
        self.port = 0
        self.etcd_port = 0
        self.url = ""
        self.etcd_url = ""
        self.workdir = Path()
        self.token = secrets.token_hex(24)
        self.unprivileged_token = secrets.token_hex(24)
        self.tokens: dict[str, str] = {
            ADMIN_USER: self.token,
            UNPRIVILEGED_USER: self.unprivileged_token,
        }
        self._groups: dict[str, list[str]] = {
            ADMIN_USER: ["system:masters"],
            UNPRIVILEGED_USER: [],
        }
        for name, groups in (users or {}).items():
            self.tokens[name] = secrets.token_hex(24)
            self._groups[name] = list(groups)

        self.ca_file = Path()
        self.ca_key_file = Path()
        self.kubeconfig = Path()
        self.kubectl = self._find_kubectl()

        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._counter = 0

    # ------------------------------------------------------------------ api

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def etcd_log(self) -> Path:
        return self.workdir / "etcd.log"

    @property
    def apiserver_log(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    def start(self) -> None:
        """Start etcd and kube-apiserver; return once /readyz is ok."""
        for name in ("kube-apiserver", "etcd"):
            if not os.access(self.bin_dir / name, os.X_OK):
                raise ControlPlaneError(
                    f"{self.bin_dir / name} missing; run tools/controlplane/build.sh"
                )
        if shutil.which("openssl") is None:
            raise ControlPlaneError("the openssl CLI is needed (apt-get install openssl)")
        if self._own_workdir:
            self.workdir = Path(tempfile.mkdtemp(prefix="jiomosa-kube-"))
        else:
            assert self._workdir_arg is not None
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        self._procs = []
        self._finalizer = weakref.finalize(self, _cleanup, self._procs)
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._make_pki()
            self._write_token_file()
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self.kubeconfig = self.kubeconfig_for_token(
                self.token, self.workdir / "kubeconfig", user=ADMIN_USER
            )
        except BaseException:
            keep, self.keep_workdir = self.keep_workdir, True  # logs, for a post-mortem
            self.stop()
            self.keep_workdir = keep
            raise

    def stop(self) -> None:
        """Orderly shutdown: apiserver, then etcd (SIGTERM, wait, SIGKILL)."""
        _stop_process(self._apiserver)
        _stop_process(self._etcd)
        self._apiserver = self._etcd = None
        self._procs.clear()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        for f in self._logs:
            f.close()
        self._logs.clear()
        if (
            self._own_workdir
            and not self.keep_workdir
            and self.workdir != Path()
            and self.workdir.exists()
        ):
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self._etcd, self._apiserver))

    def env(self, kubeconfig: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """os.environ plus KUBECONFIG (admin by default) and a private
        kubectl discovery cache (ports get reused between runs)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        env["KUBECACHEDIR"] = str(self.workdir / "kubectl-cache")
        return env

    def run_kubectl(
        self,
        *args: str,
        kubeconfig: str | os.PathLike[str] | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (admin by default)."""
        if self.kubectl is None:
            raise ControlPlaneError("no kubectl found (build.sh builds one next to kube-apiserver)")
        proc = subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(kubeconfig),
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """A raw API call. Returns (HTTP status, decoded JSON or text)."""
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    # ----------------------------------------------------- other identities

    def kubeconfig_for_token(
        self,
        token: str,
        path: str | os.PathLike[str] | None = None,
        *,
        user: str = "user",
        namespace: str = "default",
    ) -> Path:
        """Write a kubeconfig that authenticates with a bearer token."""
        return self._write_kubeconfig({"token": token}, path, user=user, namespace=namespace)

    def kubeconfig_for_user(
        self,
        name: str,
        groups: Sequence[str] = (),
        path: str | os.PathLike[str] | None = None,
        *,
        namespace: str = "default",
    ) -> Path:
        """Write a kubeconfig for an arbitrary user/groups (a client cert
        signed by the control plane's client CA, made on the spot)."""
        stem = self.workdir / "pki" / f"user-{self._next()}"
        subj = "".join(f"/O={g}" for g in groups) + f"/CN={name}"
        self._openssl_key_and_cert(stem, subj, ext="extendedKeyUsage=clientAuth")
        auth = {
            "client-certificate-data": _b64(stem.with_suffix(".crt")),
            "client-key-data": _b64(stem.with_suffix(".key")),
        }
        return self._write_kubeconfig(auth, path, user=name, namespace=namespace)

    def kubeconfig_impersonating(
        self,
        user: str,
        groups: Sequence[str] = (),
        path: str | os.PathLike[str] | None = None,
        *,
        namespace: str = "default",
    ) -> Path:
        """Admin credentials plus ``as``/``as-groups`` (kubectl honours these;
        not every client library does -- prefer :meth:`kubeconfig_for_user`)."""
        auth: dict[str, Any] = {"token": self.token, "as": user}
        if groups:
            auth["as-groups"] = list(groups)
        return self._write_kubeconfig(auth, path, user=f"as-{user}", namespace=namespace)

    def ensure_namespace(self, namespace: str) -> None:
        status, body = self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )
        if status not in (201, 409):
            raise ControlPlaneError(f"cannot create namespace {namespace}: {status} {body}")

    def ensure_service_account(self, namespace: str, name: str) -> None:
        self.ensure_namespace(namespace)
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{_q(namespace)}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        )
        if status not in (201, 409):
            raise ControlPlaneError(
                f"cannot create serviceaccount {namespace}/{name}: {status} {body}"
            )

    def token_for_service_account(
        self, namespace: str, name: str, *, create: bool = True, expiration_seconds: int = 3600
    ) -> str:
        """A bound ServiceAccount token via the TokenRequest API (served by
        the apiserver itself; no controller needed)."""
        if create:
            self.ensure_service_account(namespace, name)
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{_q(namespace)}/serviceaccounts/{_q(name)}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if status != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name} failed: {status} {body}")
        return str(body["status"]["token"])

    def kubeconfig_for_service_account(
        self,
        namespace: str,
        name: str,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        expiration_seconds: int = 3600,
    ) -> Path:
        """Kubeconfig acting as ``system:serviceaccount:<namespace>:<name>``."""
        token = self.token_for_service_account(
            namespace, name, create=create, expiration_seconds=expiration_seconds
        )
        return self.kubeconfig_for_token(
            token, path, user=f"system:serviceaccount:{namespace}:{name}", namespace=namespace
        )

    def log_tail(self, lines: int = 40) -> str:
        return (
            f"--- {self.etcd_log} ---\n{_tail(self.etcd_log, lines)}\n"
            f"--- {self.apiserver_log} ---\n{_tail(self.apiserver_log, lines)}"
        )

    # ------------------------------------------------------------ internals

    def _find_kubectl(self) -> Path | None:
        env = os.environ.get("KUBECTL")
        if env:
            return Path(env)
        built = self.bin_dir / "kubectl"
        if os.access(built, os.X_OK):
            return built
        found = shutil.which("kubectl")
        return Path(found) if found else None

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")

    def _openssl_ec_key(self, path: Path) -> None:
        self._openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
        )

    def _openssl_key_and_cert(self, stem: Path, subj: str, ext: str) -> None:
        """EC P-256 key + cert for ``subj`` signed by the CA, with x509v3 ``ext``."""
        key, csr, crt, extfile = (stem.with_suffix(s) for s in (".key", ".csr", ".crt", ".ext"))
        self._openssl_ec_key(key)
        self._openssl("req", "-new", "-key", str(key), "-subj", subj, "-out", str(csr))
        extfile.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            f"keyUsage=critical,digitalSignature,keyEncipherment\n{ext}\n"
        )
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_file),
            "-CAkey", str(self.ca_key_file), "-CAcreateserial", "-days", "3650", "-sha256",
            "-extfile", str(extfile), "-out", str(crt),
        )  # fmt: skip

    def _make_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        self.ca_file, self.ca_key_file = pki / "ca.crt", pki / "ca.key"
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.ca_key_file), "-out", str(self.ca_file), "-days", "3650",
            "-subj", "/CN=jiomosa-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
        sans = [
            "IP:127.0.0.1", "DNS:localhost", "IP:10.0.0.1", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]  # fmt: skip
        self._openssl_key_and_cert(
            pki / "apiserver",
            "/CN=kube-apiserver",
            ext=f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}",
        )
        # Service-account token signing key pair.
        self._openssl_ec_key(pki / "sa.key")
        self._openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))

    def _write_token_file(self) -> None:
        # CSV: token,user,uid,"group1,group2"
        rows = []
        for user, token in self.tokens.items():
            groups = ",".join(self._groups.get(user, []))
            rows.append(f'{token},{user},{user},"{groups}"' if groups else f"{token},{user},{user}")
        path = self.workdir / "tokens.csv"
        path.write_text("\n".join(rows) + "\n")
        path.chmod(0o600)

    def _write_kubeconfig(
        self,
        auth: dict[str, Any],
        path: str | os.PathLike[str] | None,
        *,
        user: str,
        namespace: str,
    ) -> Path:
        out = Path(path) if path is not None else self.workdir / f"kubeconfig-{self._next()}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "jiomosa-test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": _b64(self.ca_file),
                    },
                }
            ],
            "users": [{"name": user, "user": auth}],
            "contexts": [
                {
                    "name": "jiomosa-test",
                    "context": {"cluster": "jiomosa-test", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "jiomosa-test",
            "preferences": {},
        }
        out.write_text(json.dumps(config, indent=2) + "\n")
        out.chmod(0o600)
        return out

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")
        self._logs.append(log)
        log.write(f"+ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            # Only from the main thread: PDEATHSIG fires when the *thread* that
            # forked exits, which would kill us early if started from a worker.
            preexec_fn=_die_with_parent
            if sys.platform == "linux" and threading.current_thread() is threading.main_thread()
            else None,
        )
        self._procs.append(proc)
        return proc

    def _fail(self, what: str) -> ControlPlaneError:
        return ControlPlaneError(f"{what} (logs kept in {self.workdir})\n{self.log_tail()}")

    def _wait_exit_or_port_clash(self, proc: subprocess.Popen[bytes], log: Path) -> bool:
        """True if the process died because its port was taken meanwhile."""
        proc.wait()
        return "address already in use" in _tail(log, 200).lower()

    def _start_etcd(self, deadline: float) -> None:
        for attempt in range(3):
            self.etcd_port, peer_port = _free_ports(2)
            self.etcd_url = f"http://127.0.0.1:{self.etcd_port}"
            peer_url = f"http://127.0.0.1:{peer_port}"
            argv = [
                str(self.bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # tests only: no durability needed, much faster
                "--log-level=warn",
            ]
            self._etcd = self._spawn("etcd", argv)
            while True:
                if self._etcd.poll() is not None:
                    if self._wait_exit_or_port_clash(self._etcd, self.etcd_log) and attempt < 2:
                        shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)
                        break  # retry with other ports
                    raise self._fail(f"etcd exited with code {self._etcd.returncode}")
                if self._etcd_healthy():
                    return
                if time.monotonic() > deadline:
                    raise self._fail(f"etcd not healthy within {self.startup_timeout:.0f} s")
                time.sleep(0.2)
        raise self._fail("etcd could not get free ports")

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _apiserver_argv(self) -> list[str]:
        pki = self.workdir / "pki"
        argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",  # unused: certs given below
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # No real endpoint for the `kubernetes` Service: 127.0.0.1 is not
            # a valid Endpoints address, and nothing in-cluster would use it.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]
        if self.disable_admission_plugins:
            argv.append(f"--disable-admission-plugins={','.join(self.disable_admission_plugins)}")
        return argv + self.extra_apiserver_args

    def _start_apiserver(self, deadline: float) -> None:
        self._ssl = None
        for attempt in range(3):
            (self.port,) = _free_ports(1)
            self.url = f"https://{self.host}:{self.port}"
            self._apiserver = self._spawn("kube-apiserver", self._apiserver_argv())
            while True:
                if self._apiserver.poll() is not None:
                    if (
                        self._wait_exit_or_port_clash(self._apiserver, self.apiserver_log)
                        and attempt < 2
                    ):
                        break
                    raise self._fail(
                        f"kube-apiserver exited with code {self._apiserver.returncode}"
                    )
                if self._etcd is not None and self._etcd.poll() is not None:
                    raise self._fail(f"etcd exited with code {self._etcd.returncode}")
                if self._apiserver_ready():
                    return
                if time.monotonic() > deadline:
                    raise self._fail(
                        f"kube-apiserver not ready within {self.startup_timeout:.0f} s"
                    )
                time.sleep(0.25)
        raise self._fail("kube-apiserver could not get a free port")

    def _apiserver_ready(self) -> bool:
        try:
            status, _ = self.request("GET", "/readyz", timeout=5)
            if status != 200:
                return False
            # The bootstrap controller creates `default` shortly after; the
            # RBAC bootstrap policy is part of /readyz already.
            status, _ = self.request("GET", "/api/v1/namespaces/default", timeout=5)
            return status == 200
        except (OSError, ssl.SSLError):
            return False


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
