"""The TCP sockets of a process tree, read from /proc (what `ss -ltnp` shows, for the run's own
processes only): used to check that a run listens on loopback addresses only."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

LOOPBACK = {"127.0.0.1", "::1"}


def process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def decode_address(text: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6} ("0100007F:1F90") as ("127.0.0.1", 8080)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # /proc stores each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        raw = raw[12:]  # an IPv4 address in an IPv6 socket
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def tcp_sockets(inodes: set[str]) -> set[tuple[str, int, str, int, bool]]:
    """(local host, local port, remote host, remote port, listening) of the sockets with these inodes."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                local, remote = decode_address(fields[1]), decode_address(fields[2])
                found.add((*local, *remote, fields[3] == "0A"))
    return found


def listeners(sockets) -> set[tuple[str, int]]:
    return {(host, port) for host, port, _, _, listening in sockets if listening}


class SocketWatcher(threading.Thread):
    """Records every TCP socket the process tree under `process` (a Popen, or a pid watched until
    `stop()`) holds while it runs."""

    def __init__(self, process: subprocess.Popen | int):
        super().__init__(daemon=True)
        self.process, self.sockets = process, set()
        self._stopped = threading.Event()

    def alive(self) -> bool:
        if isinstance(self.process, int):
            return not self._stopped.is_set()
        return self.process.poll() is None

    def run(self) -> None:
        root = self.process if isinstance(self.process, int) else self.process.pid
        while self.alive():
            self.sockets |= tcp_sockets(socket_inodes(process_tree(root)))
            time.sleep(0.2)

    def stop(self) -> None:
        self._stopped.set()
        self.join()
