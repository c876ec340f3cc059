"""Separate hosts on this machine, for tests of what crosses a network. Each host is a network
namespace plus a mount and UTS namespace of its own (its own /tmp, /dev/shm, $HOME and hostname),
and the hosts are joined by a bridge that lives in a namespace of its own: no address, link or
route is added to this machine's own namespace, so no test traffic touches its interfaces.

A host's namespaces are held by one `sleep` process; everything run on the host enters them with
nsenter. Killing every process in a host's mount namespace is a host crash; `restart` then gives
it empty disks again. Every process, namespace and link made here is removed on exit, also after
a failure; namespaces a killed test run left behind are removed by the next one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

PREFIX = "stt"          # netns names: stt<pid of the test process>-<host>
SUBNET = "10.213.0"     # hosts .1, .2, ...: private to the bridge, which no other host reaches
# a host's own disks: /tmp and /dev/shm (Ray's object store) as empty tmpfs; HOME under /tmp.
# The code it runs ($@: the checkout and its Python, when they live under /tmp, as in a CI clone)
# is bound back in, read-only, through a staging tmpfs on /mnt.
_BOOT = """set -e
mount -t tmpfs -o size=1m stt-stage /mnt
i=0; for p in "$@"; do mkdir -p /mnt/k$i; mount --bind "$p" /mnt/k$i; i=$((i+1)); done
mount -t tmpfs -o mode=1777,size=4g stt-tmp /tmp
mount -t tmpfs -o mode=1777,size=2g stt-shm /dev/shm
i=0; for p in "$@"; do
  mkdir -p "$p"; mount --bind /mnt/k$i "$p"; mount -o remount,bind,ro "$p"; i=$((i+1))
done
umount -l /mnt
mkdir -p /tmp/home
hostname "$0"
exec sleep infinity"""


def _kept() -> list[str]:
    """What every host must see of this machine's /tmp: the checkout and the Python running."""
    import sys

    root = str(Path(__file__).resolve().parents[1])
    paths = sorted({str(Path(p).resolve()) for p in (root, sys.prefix, sys.base_prefix)})
    under_tmp = [p for p in paths if p == "/tmp" or p.startswith("/tmp/")]
    return [p for p in under_tmp if not any(p.startswith(q + "/") for q in under_tmp if q != p)]


def unavailable() -> str | None:
    """Why hosts cannot be made here (not root, no iproute2/util-linux, namespaces refused)."""
    if os.geteuid() != 0:
        return "network and mount namespaces need root"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if made.returncode != 0:
        return f"network namespaces are not permitted here ({made.stderr.strip()})"
    held = subprocess.run(["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c",
                           "mount -t tmpfs stt-probe /mnt"], capture_output=True, text=True)
    if held.returncode != 0:
        return f"mount namespaces are not permitted here ({held.stderr.strip()})"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


class Host:
    def __init__(self, name: str, netns: str, ip: str):
        self.name, self.netns, self.ip = name, netns, ip
        self.holder: subprocess.Popen | None = None
        self.started: list[subprocess.Popen] = []  # reaped after a crash: no zombies left
        self.mnt: str | None = None
        self.boot()

    def boot(self) -> None:
        """Fresh mount and UTS namespaces (empty /tmp) in the host's network namespace."""
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation",
             "private", "sh", "-c", _BOOT, self.name, *_kept()], start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self._booted():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"host {self.name} did not boot: "
                                   f"{self.holder.stderr.read().decode().strip()}")
            time.sleep(0.05)
        self.mnt = _mnt_ns(self.holder.pid)

    def _booted(self) -> bool:
        try:
            return Path(f"/proc/{self.holder.pid}/comm").read_text().strip() == "sleep"
        except OSError:
            return False

    def _enter(self, argv: list) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-u", "-n", "--",
                "env", f"--chdir={os.getcwd()}", *map(str, argv)]

    def popen(self, argv: list, env: dict, log: Path) -> subprocess.Popen:
        """Start argv on this host, output to `log` (a file of the test's, opened here)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(self._enter(argv), env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    def run(self, argv: list, env: dict, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self._enter(argv), env=env, input=input, capture_output=True,
                              text=True, timeout=timeout)

    def pids(self) -> list[int]:
        """Every process running on this host (in its mount namespace)."""
        return [int(p.name) for p in Path("/proc").glob("[0-9]*")
                if self.mnt is not None and _mnt_ns(int(p.name)) == self.mnt]

    def crash(self) -> None:
        """SIGKILL everything on the host, at once: no process gets to clean up."""
        for _ in range(20):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for proc in [self.holder, *self.started]:
            if proc is not None:
                proc.wait(10)
        self.started.clear()

    def restart(self) -> None:
        """Crash, then boot with empty disks (same address)."""
        self.crash()
        self.boot()


class Network:
    """Hosts on one bridge: `with Network() as net: head = net.add("head")`."""

    def __init__(self):
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}

    def __enter__(self) -> Network:
        _remove_leftovers()
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        return self

    def add(self, name: str) -> Host:
        i = len(self.hosts) + 1
        netns = f"{self.tag}-{name}"
        _ip("netns", "add", netns)
        # the pair is made with each end already in its namespace: never in this machine's
        _ip("link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", f"p{i}",
            "netns", self.switch)
        _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")
        _ip("-n", self.switch, "link", "set", f"p{i}", "up")
        _ip("-n", netns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        host = self.hosts[name] = Host(name, netns, f"{SUBNET}.{i}")
        return host

    def __exit__(self, *exc) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.crash()
        for netns in [h.netns for h in self.hosts.values()] + [self.switch]:
            _ip("netns", "del", netns, check=False)  # its links go with it


def _remove_leftovers() -> None:
    """Namespaces of a test run that was killed before its cleanup (its pid is gone)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX) or "-" not in name:
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for p in subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                    text=True).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
