"""Which `Host` headers and origins name this server (the first check of serve/app.py's Guard):
the defence against DNS rebinding and against other sites' pages."""
from __future__ import annotations

import ipaddress
import re
import socket as socketlib

from ..errors import UsageError


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_NETLOC = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")


def split_netloc(value: str) -> tuple[str, int | None] | None:
    """`host[:port]` (as in a Host header or an origin) to (lower-case host without brackets,
    port or None); None when it is not that shape."""
    match = _NETLOC.fullmatch(value)
    if not match or (match.group(2) and int(match.group(2)) > 65535):
        return None
    host = match.group(1).lower()
    if host.startswith("["):
        host = host[1:-1]
        if not _is_ip(host):
            return None
    return host, (int(match.group(2)) if match.group(2) else None)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _shown(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"


def check_allowed_host(value: str) -> str:
    """An `--allowed-host` value: a host name or IP address, optionally with :PORT."""
    if split_netloc(value.strip()) is None or value.strip().strip("[]") in ("", "0.0.0.0", "::"):
        raise UsageError(f"--allowed-host takes a host name or address with an optional :PORT "
                         f"(e.g. faces.example.org), not {value!r}.")
    return value.strip()


class HostPolicy:
    """Which `Host` headers (and origins) name this server.

    Bound to loopback: 127.0.0.1, localhost, [::1] (and the address bound). Bound to one other
    address: that address. Bound to every address (0.0.0.0, ::): loopback, this machine's names,
    and any IP literal (a DNS rebinding attack needs a name of the attacker's, never an IP
    literal). The port must be the bound one. `--allowed-host` adds names, with any port unless
    it names one.
    """

    def __init__(self, host: str, port: int | None, allowed: tuple[str, ...] = ()):
        bound = host.strip("[]").lower()
        loopback = {"127.0.0.1", "localhost", "::1"}
        self.any_ip = bound in ("0.0.0.0", "::", "")
        if is_loopback(bound):
            self.names = loopback | {bound}  # 127.0.0.2 and the like: its own address too
        elif self.any_ip:
            self.names = loopback | {socketlib.gethostname().lower(), socketlib.getfqdn().lower()}
        else:
            self.names = {bound}
        self.port = port
        self.extra: set[tuple[str, int | None]] = set()
        for value in allowed:
            parsed = split_netloc(check_allowed_host(value))
            self.extra.add(parsed)

    def allows(self, netloc: str) -> bool:
        parsed = split_netloc(netloc)
        if parsed is None:
            return False
        host, port = parsed
        if (host, port) in self.extra or (host, None) in self.extra:
            return True
        if host in self.names or (self.any_ip and _is_ip(host)):
            # Browsers leave the port out when it is the scheme's default.
            return self.port is None or port == self.port or (port is None and self.port == 80)
        return False

    def allows_origin(self, origin: str, host_header: str) -> bool:
        """Whether `Origin` is the server's own: the very host and port the request was sent to,
        or an --allowed-host (a reverse proxy that rewrites Host)."""
        match = re.fullmatch(r"(https?)://([^/?#@\s]+)", origin)
        if not match:
            return False  # "null" (a sandboxed or file: page), another scheme, or junk
        default = 80 if match.group(1) == "http" else 443
        theirs, ours = split_netloc(match.group(2)), split_netloc(host_header)
        if theirs is None:
            return False
        theirs = (theirs[0], theirs[1] or default)
        if ours is not None and theirs == (ours[0], ours[1] or default):
            return True
        return theirs in self.extra or (theirs[0], None) in self.extra

    def described(self) -> str:
        names = sorted(self.names, key=lambda n: (n != "127.0.0.1", n != "localhost", n))
        shown = [_shown(n, self.port) for n in names] + [_shown(h, p) for h, p in sorted(self.extra, key=str)]
        if self.any_ip:
            shown.append("this machine's IP addresses")
        return ", ".join(shown[:-1]) + (" or " if len(shown) > 1 else "") + shown[-1]
