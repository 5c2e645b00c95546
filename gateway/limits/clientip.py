"""The client's address behind reverse proxies: `limits.trusted_proxies` (pure).

Only a trusted peer's `X-Forwarded-For` is believed, and of it only the part the trusted
proxies appended: walking from the right, the first address that is not itself a trusted
proxy is the client. Anything left of it was written by the client and may be forged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_FORWARDED_HOPS = 32  # addresses read from the right of X-Forwarded-For


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or bare addresses) as networks; raises ValueError naming the bad one."""
    networks: list[Network] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
             trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_ip(peer: str | None, forwarded_for: Sequence[str],
              trusted: Sequence[Network]) -> str:
    """The client address: `peer`, unless it is trusted; then X-Forwarded-For's right-most
    untrusted address (`forwarded_for` holds every X-Forwarded-For header line, in order).

    An unparsable entry ends the walk: what lies left of it cannot be attributed.
    """
    peer_address = _address(peer) if peer else None
    if peer_address is None:
        return peer or "unknown"
    if not trusted or not _trusted(peer_address, trusted):
        return str(peer_address)
    hops = [hop for line in forwarded_for for hop in line.split(",") if hop.strip()]
    found = peer_address
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        address = _address(hop)
        if address is None:
            break
        found = address
        if not _trusted(address, trusted):
            break
    return str(found)
