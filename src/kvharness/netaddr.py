"""What "loopback" means, once, for every server the harness starts (the simulator, the proxy) and for the
workflow's ``host`` setting: ``localhost`` or any loopback IP address (127.0.0.0/8, ::1)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
