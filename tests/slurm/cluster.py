"""A throw-away two-node Slurm cluster on this machine, for the tests (root, Debian/Ubuntu).

Each compute node is a network namespace (own IP on a private bridge, own hostname
through a UTS namespace) running its own slurmd; slurmctld, slurmdbd (with a private
MariaDB, so `sacct` works as submitit needs) and munged run on the host. Everything
lives in one temporary folder; `stop` kills exactly the processes `start` began and
removes the namespaces, links, cgroups and /etc/hosts lines it added.

Configured like a GPU site where it can be:
- CPU binding: TaskPlugin=task/affinity with TaskPluginParam=Cores (tasks are bound to
  cores unless --cpu-bind says otherwise, as many sites set it), so a step that asks for
  one CPU per task runs on one core. Each node declares 2 CPUs (config_overrides).
- cgroups: proctrack/cgroup and task/cgroup (ConstrainCores) when a writable cgroup v1
  hierarchy with cpuset and freezer is mounted (as on the development VM). Otherwise
  (cgroup v2 only, or a read-only /sys/fs/cgroup in a container) the cluster falls back
  to proctrack/linuxproc and task/affinity alone: Slurm 22.05's cgroup/v2 plugin needs
  systemd (D-Bus) to create slurmd's scope, and no systemd runs as PID 1 here. `mode`
  in the state file says which one ran. With proctrack/cgroup, `scancel --signal` reaches
  only a step's task processes, not the processes they start, as at many sites.
- GPUs: GresTypes=gpu, Gres=gpu:2 per node, gres.conf with AutoDetect=off. Slurm 22.05
  drops a GPU without a device file, so plain files stand in for /dev/nvidiaN: jobs get
  SLURM_GPUS_ON_NODE, but there is no CUDA (train with train.device=cpu).
- InfiniBand host names: every node also answers to `<host>i` (as on JUWELS).

    python -m tests.slurm.cluster start      # prints the SLURM_CONF to export
    python -m tests.slurm.cluster stop
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
NODES = {"hpcdl-n1": "10.213.7.11", "hpcdl-n2": "10.213.7.12"}
CONTROLLER = ("hpcdl-ctl", "10.213.7.1")
BRIDGE = "hpcdlbr0"
CPUS_PER_NODE = 2
GPUS_PER_NODE = 2  # GRES with stand-in device files (no CUDA)
IB_SUFFIX = "i"  # <host>i is the node's InfiniBand name at some sites (JUWELS)
CGROUP_ROOT = Path("/sys/fs/cgroup")
HOSTS_TAG = "# hpc_dl test cluster"
STATE = Path(tempfile.gettempdir()) / "hpc_dl-slurm-cluster.json"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
DB_PORT = 3417


class ClusterError(RuntimeError):
    pass


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (network namespaces, daemons)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    if not shutil.which("ip") or not shutil.which("nsenter") or not shutil.which("unshare"):
        return "needs iproute2 and util-linux (ip, nsenter, unshare)"
    return None


def cgroup_v1() -> bool:
    """Whether Slurm's cgroup/v1 plugin can work here: cpuset and freezer mounted as cgroup v1
    and writable by us (a probe group is made and removed)."""
    for controller in ("cpuset", "freezer"):
        probe = CGROUP_ROOT / controller / "hpc_dl-probe"
        try:
            if not (CGROUP_ROOT / controller / "cgroup.procs").exists():
                return False
            probe.mkdir()
            probe.rmdir()
        except OSError:
            return False
    return True


def _run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def install() -> None:
    missing = [p for p in PACKAGES if _run("dpkg", "-s", p, check=False).returncode != 0]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", "-q", env=env, timeout=600)
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, env=env, timeout=900)


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "etc" / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.mode = "cgroup" if cgroup_v1() else "affinity"  # see the module's docstring

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": str(self.conf)}

    # ----------------------------------------------------------------- start
    @classmethod
    def start(cls) -> "Cluster":
        reason = unavailable()
        if reason:
            raise ClusterError(reason)
        if STATE.exists():
            stop()  # left over from a killed test session
        _clear_network()  # and what one killed without its state file left
        install()
        cluster = cls(Path(tempfile.mkdtemp(prefix="hpc_dl-slurm-")))
        try:
            cluster._start()
        except BaseException:
            cluster.save()
            stop()
            raise
        cluster.save()
        return cluster

    def _start(self) -> None:
        for sub in ("etc", "state", "log", "spool", "db", "munge", "run"):
            (self.root / sub).mkdir(parents=True)
        self._network()
        self._munge()
        self._database()
        self._write_config()
        self._spawn("slurmdbd", ["slurmdbd", "-D"], wait_for=self._dbd_up)
        _run("sacctmgr", "-i", "add", "cluster", "hpcdl", env={**os.environ, **self.env}, timeout=60)
        # slurmctld only runs on a host whose name is SlurmctldHost: give it its own UTS namespace.
        ctld = f'hostname {CONTROLLER[0]} && exec slurmctld -D -i -f "{self.conf}"'
        self._spawn("slurmctld", ["unshare", "--uts", "sh", "-c", ctld], wait_for=self._ctld_up)
        for node, _ in NODES.items():
            cmd = ["nsenter", f"--net=/run/netns/{node}", "unshare", "--uts", "sh", "-c",
                   f'hostname {node} && exec slurmd -D -N {node} -f "{self.conf}"']  # fmt: skip
            self._spawn(f"slurmd-{node}", cmd)
        self._wait(self._nodes_idle, 60, "the compute nodes to become idle")

    def _network(self) -> None:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{CONTROLLER[1]}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for node, addr in NODES.items():
            host_end, node_end = f"{node[-2:]}h-{BRIDGE}"[:15], f"{node[-2:]}c-{BRIDGE}"[:15]
            _run("ip", "netns", "add", node)
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
            _run("ip", "link", "set", host_end, "master", BRIDGE)
            _run("ip", "link", "set", host_end, "up")
            _run("ip", "link", "set", node_end, "netns", node)
            _run("ip", "-n", node, "addr", "add", f"{addr}/24", "dev", node_end)
            _run("ip", "-n", node, "link", "set", node_end, "up")
            _run("ip", "-n", node, "link", "set", "lo", "up")
        hosts = Path("/etc/hosts").read_text()
        lines = [f"{CONTROLLER[1]} {CONTROLLER[0]} {HOSTS_TAG}"]
        lines += [f"{addr} {name} {name}{IB_SUFFIX} {HOSTS_TAG}" for name, addr in NODES.items()]
        Path("/etc/hosts").write_text(hosts.rstrip("\n") + "\n" + "\n".join(lines) + "\n")

    def _munge(self) -> None:
        if MUNGE_SOCKET.exists() and _run("munge", "-n", check=False).returncode == 0:
            raise ClusterError(f"another munged already answers on {MUNGE_SOCKET}; stop it first")
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        m = self.root / "munge"
        self._spawn("munged", ["munged", "-F", "--force", f"--key-file={key}", f"--socket={MUNGE_SOCKET}",
                               f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                               f"--seed-file={m / 'munged.seed'}"],
                    wait_for=lambda: _run("munge", "-n", check=False).returncode == 0)  # fmt: skip

    def _database(self) -> None:
        data, sock = self.root / "db" / "data", self.root / "db" / "mysqld.sock"
        _run("mariadb-install-db", "--user=root", f"--datadir={data}", "--auth-root-authentication-method=normal",
             "--skip-test-db", timeout=300)  # fmt: skip
        cmd = ["mariadbd", "--user=root", f"--datadir={data}", f"--socket={sock}", f"--port={DB_PORT}",
               "--bind-address=127.0.0.1", f"--pid-file={self.root / 'db' / 'mariadb.pid'}",
               "--innodb-buffer-pool-size=64M", "--innodb-lock-wait-timeout=900",
               f"--log-error={self.root / 'log' / 'mariadb.log'}"]  # fmt: skip
        ping = ["mariadb-admin", f"--socket={sock}", "ping"]
        self._spawn("mariadbd", cmd, wait_for=lambda: _run(*ping, check=False).returncode == 0)
        sql = ("CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmdb';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")  # fmt: skip
        _run("mariadb", f"--socket={sock}", "-e", sql)

    def _write_config(self) -> None:
        r = self.root
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={n} NodeAddr={a} CPUs={CPUS_PER_NODE} RealMemory=4000 "
            f"Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN"
            for n, a in NODES.items()
        )
        if self.mode == "cgroup":
            plugins = "ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup,task/affinity"
            # Devices are not constrained: the stand-in GPU files are not device nodes.
            (r / "etc" / "cgroup.conf").write_text(
                "CgroupPlugin=cgroup/v1\nConstrainCores=yes\nConstrainDevices=no\nConstrainRAMSpace=no\n"
            )
        else:
            plugins = "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/affinity"
        self.conf.write_text(f"""ClusterName=hpcdl
SlurmctldHost={CONTROLLER[0]}({CONTROLLER[1]})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire + 1 s before it may start again (slurmd still holds the old
# instance's revoked credential until then): 10 s instead of the default 120 s.
AuthInfo=cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldPort=6917
SlurmdPort=6918
{plugins}
TaskPluginParam=Cores
GresTypes=gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=5
JobRequeue=1
InactiveLimit=0
SlurmdTimeout=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        # Slurm 22.05 drops a GPU without a device file: plain files stand in for /dev/nvidiaN.
        (r / "dev").mkdir(exist_ok=True)
        for i in range(GPUS_PER_NODE):
            (r / "dev" / f"gpu{i}").touch()
        (r / "etc" / "gres.conf").write_text(f"AutoDetect=off\nName=gpu File={r}/dev/gpu[0-{GPUS_PER_NODE - 1}]\n")
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(f"""AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile={r}/run/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={DB_PORT}
StorageUser=slurm
StoragePass=slurmdb
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    # ------------------------------------------------------------- helpers
    def _spawn(self, name: str, cmd: list, wait_for=None) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (the daemon keeps it)
        proc = subprocess.Popen(
            [str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.env},
        )  # fmt: skip
        self.pids[name] = proc.pid
        self.save()
        if wait_for:
            self._wait(lambda: proc.poll() is None and wait_for(), 60, f"{name} to start", proc, name)

    def _wait(self, ready, timeout: float, what: str, proc=None, name=None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{name} exited {proc.returncode}: {self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(f"timed out waiting for {what}: {self.log_tail(name) if name else ''}")

    def log_tail(self, name: str, chars: int = 1500) -> str:
        path = self.root / "log" / f"{name}.out"
        return path.read_text()[-chars:] if path.exists() else ""

    def _dbd_up(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", 6819)) == 0

    def _ctld_up(self) -> bool:
        return _run("scontrol", "ping", check=False, env={**os.environ, **self.env}).returncode == 0

    def _nodes_idle(self) -> bool:
        out = _run("sinfo", "-h", "-N", "-o", "%N %t", check=False, env={**os.environ, **self.env}).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(n) == "idle" for n in NODES)

    def save(self) -> None:
        STATE.write_text(json.dumps({"root": str(self.root), "pids": self.pids, "mode": self.mode}))


def stop() -> None:
    """Stop what `start` began (from the state file) and undo its network and /etc/hosts changes."""
    state = json.loads(STATE.read_text()) if STATE.exists() else {"root": None, "pids": {}}
    for _name, pid in reversed(list(state["pids"].items())):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    for pid in state["pids"].values():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    _clear_network()
    for node in NODES:  # the cgroups slurmd made (cgroup mode): a folder is removed once it is empty
        for top in CGROUP_ROOT.glob(f"*/slurm_{node}"):
            for group in sorted(top.rglob("*"), key=lambda g: -len(g.parts)) + [top]:
                if group.is_dir():
                    try:
                        group.rmdir()
                    except OSError:
                        pass
    if state["root"]:
        shutil.rmtree(state["root"], ignore_errors=True)
    STATE.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    if sys.argv[1:] == ["start"]:
        c = Cluster.start()
        print(f"export SLURM_CONF={c.conf}")
    elif sys.argv[1:] == ["stop"]:
        stop()
    else:
        sys.exit(__doc__)


def _clear_network() -> None:
    """Remove the nodes' namespaces (and what still runs in them), the bridge and the /etc/hosts lines;
    also what a session killed without its state file left (the next start would find them taken)."""
    for node in NODES:
        for pid in _run("ip", "netns", "pids", node, check=False).stdout.split():  # job processes left inside
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "delete", node, check=False)
        _run("ip", "link", "delete", f"{node[-2:]}h-{BRIDGE}"[:15], check=False)
    _run("ip", "link", "delete", BRIDGE, check=False)
    hosts = Path("/etc/hosts")
    if HOSTS_TAG in hosts.read_text():
        hosts.write_text("".join(line for line in hosts.read_text().splitlines(True) if HOSTS_TAG not in line))
