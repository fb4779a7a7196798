"""A real single-node Kubernetes cluster on this machine (tools/cluster/README.md).

    python3 tools/cluster/cluster.py up      # build what is missing, start, install the chart
    python3 tools/cluster/cluster.py down    # stop everything, remove the node's state
    python3 tools/cluster/cluster.py status  # what runs

etcd and kube-apiserver (tools/controlplane), kube-controller-manager, kube-scheduler, kubelet
and kube-proxy (tools/cluster/node, the same Kubernetes release) run as host processes;
Debian's containerd and runc run the pods, Debian's CNI plugins wire them to a bridge; CoreDNS
and everything else run as pods from images built here (tools/images). ``up`` then installs
charts/jiomosa (release ``jiomosa`` in namespace ``jiomosa``, tools/cluster/values.yaml) and
starts the sticky front (front.py: nginx as ingress-nginx renders the chart's Ingresses).
The last line ``up`` prints is ``KUBECONFIG=<path>``.

Everything lives under ``JIOMOSA_CLUSTER_DIR`` (default /var/lib/jiomosa-cluster), which
``down`` removes after killing every process, container, mount, network namespace, bridge and
iptables chain the cluster made. Standard library only; needs root.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import node_config as nc  # noqa: E402

CACHE = Path(os.environ.get("JIOMOSA_CACHE") or "/var/cache/jiomosa")
STATE = Path(os.environ.get("JIOMOSA_CLUSTER_DIR") or "/var/lib/jiomosa-cluster")
FRONT = os.environ.get("JIOMOSA_CLUSTER_FRONT") or "127.0.0.1:8480"
RELEASE = NAMESPACE = "jiomosa"
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "conntrack",
              "nginx", "ip", "openssl", "mount")
IMAGES = ("jiomosa", "jiomosa-browser", "redis", "pause")
# Host processes, in start order (down stops them in reverse).
PROCESSES = ("containerd", "etcd", "kube-apiserver", "kube-controller-manager",
             "kube-scheduler", "kubelet", "kube-proxy", "front")


class ClusterError(Exception):
    pass


def log(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], *, check: bool = True, capture: bool = True,
        input: str | None = None, timeout: float = 600.0,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), input=input, text=True, timeout=timeout, check=False,
                          stdout=subprocess.PIPE if capture else sys.stderr,
                          stderr=subprocess.PIPE if capture else sys.stderr, env=env)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): "
                           f"{(proc.stderr or '').strip()[-2000:]}")
    return proc


def script_lines(argv: Sequence[str]) -> list[str]:
    """Run a build script; the lines it prints (its results). Of its log only the lines
    saying what it builds reach our stderr (all of it when it fails)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=3600,
                          check=False)
    if proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    for line in proc.stderr.splitlines():
        if line.startswith(("building", "cluster/build.sh", "controlplane/build.sh")) \
                or " built in " in line:
            log(line)
    return proc.stdout.split()


def last_line(argv: Sequence[str]) -> str:
    return script_lines(argv)[-1]


def wait_for(probe: Callable[[], object], timeout: float, what: str,
             interval: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def node_ip() -> str:
    """The address of the default route's interface: what pods reach the API server at."""
    out = run(["ip", "-4", "-o", "route", "get", "1.1.1.1"], check=False).stdout.split()
    if "src" in out:
        return out[out.index("src") + 1]
    raise ClusterError("no IPv4 default route: the node needs an address pods can reach")


def layout(ip: str = "") -> nc.Layout:
    k8s = _k8s_version()
    return nc.Layout(state=STATE, controlplane_bin=CACHE / "controlplane" / k8s,
                     node_bin=CACHE / "cluster" / k8s, node_ip=ip or _recorded_ip(),
                     front_listen=FRONT)


def _required(gomod: str, module: str) -> str:
    """The version of ``module`` a go.mod under tools/cluster requires."""
    for line in (HERE / gomod).read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["require", module]:
            return parts[2]
    raise ClusterError(f"cannot read the version of {module} from tools/cluster/{gomod}")


def _k8s_version() -> str:
    return _required("node/go.mod", "k8s.io/kubernetes")


def coredns_version() -> str:
    return _required("coredns/go.mod", "github.com/coredns/coredns")


def _recorded_ip() -> str:
    path = STATE / "node-ip"
    return path.read_text().strip() if path.exists() else ""


# ----------------------------------------------------------------------------- checks
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


def preflight(machine_only: bool = False) -> None:
    """Why this machine cannot run the cluster, as one clear error (or nothing).
    ``machine_only``: only what installing packages cannot mend (root, capabilities, kernel)."""
    if os.geteuid() != 0:
        raise ClusterError("needs root (containers, mounts, iptables)")
    status = Path("/proc/self/status").read_text()
    cap_eff = int(next(line.split()[1] for line in status.splitlines()
                       if line.startswith("CapEff:")), 16)
    for bit, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")):
        if not cap_eff >> bit & 1:
            raise ClusterError(f"root lacks {name} (an unprivileged container?): mounts and "
                               "pod networks need it")
    if not machine_only:
        missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
        if missing:
            raise ClusterError(f"missing host tools: {' '.join(missing)} (make cluster-deps)")
        for plugin in ("bridge", "host-local", "portmap", "loopback"):
            if not (Path("/usr/lib/cni") / plugin).exists():
                raise ClusterError(f"/usr/lib/cni/{plugin} missing "
                                   "(containernetworking-plugins)")
    if not Path("/sys/fs/cgroup").is_dir() or not os.listdir("/sys/fs/cgroup"):
        raise ClusterError("no cgroup hierarchy under /sys/fs/cgroup")
    if "overlay" not in Path("/proc/filesystems").read_text():
        if shutil.which("modprobe"):
            run(["modprobe", "overlay"], check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise ClusterError("the kernel has no overlayfs")


def sysctls() -> None:
    bridge = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not bridge.exists():
        if shutil.which("modprobe"):
            run(["modprobe", "br_netfilter"], check=False)
    settings = {"/proc/sys/net/ipv4/ip_forward": "1", str(bridge): "1",
                "/proc/sys/net/bridge/bridge-nf-call-ip6tables": "1"}
    for path, value in settings.items():
        try:
            Path(path).write_text(value)
        except OSError as exc:
            raise ClusterError(f"cannot set {path} = {value}: {exc}") from None


# ----------------------------------------------------------------------------- processes
def _pid_file(name: str) -> Path:
    return STATE / "run" / f"{name}.pid"


def pid_of(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"):
        return None  # a zombie is gone
    return pid


def spawn(name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    nc_logs = STATE / "logs"
    nc_logs.mkdir(parents=True, exist_ok=True)
    with open(nc_logs / f"{name}.log", "ab") as out:
        out.write(f"+ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=STATE, env=env)
    _pid_file(name).write_text(str(proc.pid))
    log(f"started {name} (pid {proc.pid})")


def stop(name: str, grace: float = 10.0) -> None:
    pid = pid_of(name)
    if pid is None:
        _pid_file(name).unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_of(name) is not None:
        time.sleep(0.1)
    if pid_of(name) is not None:
        os.kill(pid, signal.SIGKILL)
    _pid_file(name).unlink(missing_ok=True)
    log(f"stopped {name}")


def tail(name: str, lines: int = 30) -> str:
    path = STATE / "logs" / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() \
        else ""


# ----------------------------------------------------------------------------- PKI
def _openssl(*args: str) -> None:
    run(["openssl", *args])


def make_pki(lay: nc.Layout) -> dict[str, str]:
    """A CA, the API server's serving certificate, its client certificate for kubelets, the
    service-account key pair and a static token per component. Returns who -> token."""
    pki = lay.pki
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"), "-days", "3650",
             "-subj", "/CN=jiomosa-cluster-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    sans = ["IP:127.0.0.1", f"IP:{lay.node_ip}", f"IP:{nc.API_SERVICE_IP}", "DNS:localhost",
            "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            f"DNS:kubernetes.default.svc.{nc.CLUSTER_DOMAIN}"]
    _signed(pki, "apiserver", "/CN=kube-apiserver",
            f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}")
    _signed(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet",
            "extendedKeyUsage=clientAuth")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(pki / "sa.key"))
    _openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    tokens = {who: os.urandom(24).hex() for who in nc.IDENTITIES}
    rows = []
    for who, (user, groups) in nc.IDENTITIES.items():
        rows.append(f'{tokens[who]},{user},{user},"{",".join(groups)}"' if groups
                    else f"{tokens[who]},{user},{user}")
    (pki / "tokens.csv").write_text("\n".join(rows) + "\n")
    for path in pki.iterdir():
        path.chmod(0o600)
    return tokens


def _signed(pki: Path, stem: str, subject: str, ext: str) -> None:
    key, csr, crt, extfile = (pki / f"{stem}.{s}" for s in ("key", "csr", "crt", "ext"))
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(key))
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    extfile.write_text("basicConstraints=critical,CA:FALSE\n"
                       f"keyUsage=critical,digitalSignature,keyEncipherment\n{ext}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey",
             str(pki / "ca.key"), "-CAcreateserial", "-days", "3650", "-sha256",
             "-extfile", str(extfile), "-out", str(crt))


def write_kubeconfigs(lay: nc.Layout, tokens: dict[str, str]) -> None:
    ca = base64.b64encode((lay.pki / "ca.crt").read_bytes()).decode()
    for who, (user, _) in nc.IDENTITIES.items():
        # The node's own parts talk to the API server directly, not through its Service.
        server = f"https://127.0.0.1:{nc.API_PORT}"
        path = lay.kubeconfig_of(who)
        path.write_text(nc.kubeconfig(server, ca, user, tokens[who]))
        path.chmod(0o600)


# ----------------------------------------------------------------------------- API
def api(lay: nc.Layout, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``path`` as the admin: (status, body), or (0, b"") when the server is not there."""
    config = json.loads(lay.kubeconfig.read_text())
    token = config["users"][0]["user"]["token"]
    context = ssl.create_default_context(cafile=str(lay.pki / "ca.crt"))
    request = urllib.request.Request(f"https://127.0.0.1:{nc.API_PORT}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ssl.SSLError):
        return 0, b""


def kubectl(lay: nc.Layout, *args: str, input: str | None = None,
            check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return run([str(lay.controlplane_bin / "kubectl"), "--kubeconfig", str(lay.kubeconfig),
                *args], input=input, check=check, timeout=timeout)


def node_ready(lay: nc.Layout) -> bool:
    status, body = api(lay, f"/api/v1/nodes/{nc.NODE_NAME}")
    if status != 200:
        return False
    conditions = json.loads(body).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


# ----------------------------------------------------------------------------- images
def build_images() -> dict[str, Path]:
    """Every image the cluster runs, as OCI archives: ours (tools/images) and CoreDNS (its
    static binary alone)."""
    archives = script_lines(["bash", str(ROOT / "tools/images/build.sh"), *IMAGES])
    found = dict(zip(IMAGES, (Path(a) for a in archives), strict=True))
    found["coredns"] = coredns_image()
    return found


def coredns_image() -> Path:
    binary = CACHE / "cluster" / _k8s_version() / "coredns"
    key = hashlib.sha256(binary.read_bytes() + (ROOT / "tools/images/oci.py").read_bytes())
    archive = CACHE / "images" / f"coredns-{coredns_version()}-{key.hexdigest()[:16]}.oci.tar"
    if archive.exists():
        return archive
    work = STATE.parent / ".jiomosa-coredns-build"
    shutil.rmtree(work, ignore_errors=True)
    (work / "root").mkdir(parents=True)
    shutil.copy2(binary, work / "root" / "coredns")
    run(["tar", "--owner=0", "--group=0", "-C", str(work / "root"), "-cf",
         str(work / "rootfs.tar"), "coredns"])
    (work / "config.json").write_text(json.dumps({
        "User": "0:0", "Entrypoint": ["/coredns"], "WorkingDir": "/",
        "ExposedPorts": {"53/udp": {}, "53/tcp": {}}}))
    run([sys.executable, str(ROOT / "tools/images/oci.py"), str(work / "rootfs.tar"),
         str(archive), "--name", f"{nc.COREDNS_IMAGE}:{coredns_version()}",
         "--config", str(work / "config.json")])
    shutil.rmtree(work, ignore_errors=True)
    return archive


def import_images(lay: nc.Layout, archives: dict[str, Path]) -> None:
    for name, archive in archives.items():
        run(["ctr", "--address", str(lay.containerd_socket), "-n", "k8s.io", "images",
             "import", str(archive)], timeout=600)
        log(f"imported {name} ({archive.name})")


# ----------------------------------------------------------------------------- up
def up(args: argparse.Namespace) -> int:
    preflight()
    if is_up():
        lay = layout()
        log("already running")
        if args.chart:
            install_chart(lay)
            start_front(lay)
        print(f"KUBECONFIG={lay.kubeconfig}")
        return 0
    if any(pid_of(p) for p in PROCESSES) or STATE.exists():
        log("a partial cluster is there: taking it down first")
        down(args)
    started = time.monotonic()
    last_line(["bash", str(ROOT / "tools/controlplane/build.sh")])
    last_line(["bash", str(HERE / "build.sh")])
    archives = build_images()
    lay = layout(node_ip())
    (STATE / "run").mkdir(parents=True)
    (STATE / "node-ip").write_text(lay.node_ip)
    sysctls()
    tokens = make_pki(lay)
    write_kubeconfigs(lay, tokens)
    sandbox = f"{nc.REGISTRY}/pause:{_chart_app_version()}"
    (STATE / "containerd.toml").write_text(nc.containerd_config(lay, sandbox))
    lay.cni_conf_dir.mkdir()
    (lay.cni_conf_dir / "10-jiomosa.conflist").write_text(json.dumps(nc.cni_config(lay)))
    (STATE / "kubelet.json").write_text(json.dumps(nc.kubelet_config(lay), indent=2))
    (STATE / "kube-proxy.json").write_text(json.dumps(nc.kube_proxy_config(lay), indent=2))
    commands = nc.commands(lay)
    try:
        spawn("containerd", commands["containerd"])
        wait_for(lambda: run(["ctr", "--address", str(lay.containerd_socket), "version"],
                             check=False).returncode == 0, 30, "containerd")
        import_images(lay, archives)
        spawn("etcd", commands["etcd"])
        spawn("kube-apiserver", commands["kube-apiserver"])
        wait_for(lambda: api(lay, "/readyz")[0] == 200, 90, "kube-apiserver /readyz")
        for name in ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
            spawn(name, commands[name])
        wait_for(lambda: node_ready(lay), 120, f"node {nc.NODE_NAME} Ready")
        install_dns(lay)
        if args.chart:
            install_chart(lay)
            start_front(lay)
    except (ClusterError, subprocess.TimeoutExpired) as exc:
        for name in PROCESSES:
            if pid_of(name) is None and (STATE / "logs" / f"{name}.log").exists():
                log(f"{name} is not running; its log ends:\n{tail(name)}")
        raise ClusterError(f"{exc} (logs in {STATE / 'logs'}; make cluster-down cleans up)") \
            from None
    log(f"up in {time.monotonic() - started:.0f} s")
    print(f"KUBECONFIG={lay.kubeconfig}")
    return 0


def is_up() -> bool:
    if not all(pid_of(p) for p in PROCESSES if p != "front"):
        return False
    lay = layout()
    return lay.kubeconfig.exists() and node_ready(lay)


def install_dns(lay: nc.Layout) -> None:
    manifests = nc.coredns_manifests(f"{nc.COREDNS_IMAGE}:{coredns_version()}")
    kubectl(lay, "apply", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    kubectl(lay, "-n", "kube-system", "rollout", "status", "deployment/coredns",
            "--timeout=120s", timeout=150)
    log("CoreDNS ready")


def _chart_app_version() -> str:
    for line in (ROOT / "charts/jiomosa/Chart.yaml").read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise ClusterError("charts/jiomosa/Chart.yaml has no appVersion")


def helm() -> str:
    return last_line(["bash", str(ROOT / "tools/chart/fetch.sh"), "helm"])


def chart_args() -> list[str]:
    """helm install arguments: tools/cluster/values.yaml and the images built here."""
    tag = _chart_app_version()
    return ["-f", str(HERE / "values.yaml"),
            "--set", f"image.repository={nc.REGISTRY}/jiomosa", "--set", f"image.tag={tag}",
            "--set", f"browser.image.repository={nc.REGISTRY}/jiomosa-browser",
            "--set", f"browser.image.tag={tag}",
            "--set", f"redis.image={nc.REGISTRY}/redis:{tag}"]


def install_chart(lay: nc.Layout) -> None:
    env = {**os.environ, "KUBECONFIG": str(lay.kubeconfig)}
    kubectl(lay, "create", "namespace", NAMESPACE, check=False)
    run([helm(), "upgrade", "--install", RELEASE, str(ROOT / "charts/jiomosa"), "-n", NAMESPACE,
         *chart_args(), "--wait", "--timeout", "5m"], env=env, timeout=400)
    # The quota controller counts BrowserSessions only once it has discovered their CRD (up
    # to 30 s after the install); until then the API server refuses every create.
    def quotas_known() -> bool:
        status, body = api(lay, f"/api/v1/namespaces/{NAMESPACE}/resourcequotas")
        items = json.loads(body).get("items", []) if status == 200 else None
        return items is not None and all(
            set((q.get("spec") or {}).get("hard") or {})
            <= set((q.get("status") or {}).get("used") or {}) for q in items)
    wait_for(quotas_known, 90, "the ResourceQuota's first count")
    log(f"helm release {RELEASE} installed in namespace {NAMESPACE}")


def start_front(lay: nc.Layout) -> None:
    if pid_of("front"):
        return
    spawn("front", [sys.executable, str(HERE / "front.py"), "--kubeconfig",
                    str(lay.kubeconfig), "--listen", lay.front_listen,
                    "--dir", str(STATE / "front")])
    host, port = lay.front_listen.rsplit(":", 1)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False
    wait_for(answers, 60, f"the front on {lay.front_listen}")
    log(f"front (nginx) on http://{lay.front_listen}")


# ----------------------------------------------------------------------------- down
def down(args: argparse.Namespace) -> int:
    """Stop and remove everything ``up`` made; safe to run at any time, any number of times."""
    del args
    lay = layout()
    stop("front")
    for name in ("kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager"):
        stop(name)
    _kill_pods(lay)
    stop("containerd")
    _kill_shims(lay)
    for name in ("kube-apiserver", "etcd"):
        stop(name)
    _unmount_under(STATE)
    _remove_netns()
    run(["ip", "link", "delete", nc.BRIDGE], check=False)
    _clean_iptables(lay)
    _remove_cgroups()
    if STATE.exists():
        shutil.rmtree(STATE, ignore_errors=True)
    log("down: nothing of the cluster is left running")
    return 0


def _kill_pods(lay: nc.Layout) -> None:
    """Every container's processes: SIGKILL through the pod cgroups kubelet made."""
    del lay
    for _ in range(3):
        pids = {int(p) for f in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs")
                for p in f.read_text().split()}
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _kill_shims(lay: nc.Layout) -> None:
    marker = str(lay.containerd_socket).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _unmount_under(prefix: Path) -> None:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(str(prefix) + "/") or point.startswith("/run/netns/cni-") \
                or point.startswith("/var/run/netns/cni-"):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        run(["umount", "-l", point], check=False)


def _remove_netns() -> None:
    for base in (Path("/run/netns"), Path("/var/run/netns")):
        if base.is_dir():
            for ns in base.glob("cni-*"):
                run(["ip", "netns", "delete", ns.name], check=False)
                ns.unlink(missing_ok=True)


def _clean_iptables(lay: nc.Layout) -> None:
    """kube-proxy's and kubelet's KUBE-* chains and the bridge plugin's CNI-* chains, in every
    table, IPv4 and IPv6: first the rules of the built-in chains that jump to them, then the
    chains themselves."""
    proxy = lay.node_bin / "kube-proxy"
    if proxy.exists():
        run([str(proxy), "--cleanup"], check=False)
    ours = ("KUBE-", "CNI-")
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            rules = run([tool, "-t", table, "-S"], check=False).stdout.splitlines()
            chains = [r.split()[1] for r in rules
                      if r.startswith("-N ") and r.split()[1].startswith(ours)]
            for rule in rules:
                words = shlex.split(rule)
                if words[:1] == ["-A"] and not words[1].startswith(ours) and any(
                        w.startswith(ours) for w in words[2:]):
                    run([tool, "-t", table, "-D", *words[1:]], check=False)
            for chain in chains:
                run([tool, "-t", table, "-F", chain], check=False)
            for chain in chains:
                run([tool, "-t", table, "-X", chain], check=False)


def _remove_cgroups() -> None:
    for top in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for path in sorted(top.glob("**/"), key=lambda p: len(str(p)), reverse=True):
            try:
                path.rmdir()
            except OSError:
                pass


# ----------------------------------------------------------------------------- status
def status(args: argparse.Namespace) -> int:
    del args
    for name in PROCESSES:
        pid = pid_of(name)
        print(f"{name:26} {f'running (pid {pid})' if pid else 'stopped'}")
    if STATE.exists() and layout().kubeconfig.exists():
        print(f"node {nc.NODE_NAME:21} {'Ready' if node_ready(layout()) else 'not ready'}")
        print(f"KUBECONFIG={layout().kubeconfig}")
    return 0 if is_up() else 1


def check(args: argparse.Namespace) -> int:
    preflight(machine_only=args.machine)
    print("this machine can run the cluster" + (" (once its packages are installed)"
                                                if args.machine else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start the cluster and install the chart")
    up_parser.add_argument("--no-chart", dest="chart", action="store_false",
                           help="only the node: no helm release, no front")
    up_parser.set_defaults(func=up)
    sub.add_parser("down", help="stop and remove everything").set_defaults(func=down)
    sub.add_parser("status", help="what runs").set_defaults(func=status)
    check_parser = sub.add_parser("check", help="can this machine run the cluster (exit 0), "
                                  "or why not")
    check_parser.add_argument("--machine", action="store_true",
                              help="only what packages cannot mend: root, capabilities, kernel")
    check_parser.set_defaults(func=check)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ClusterError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
