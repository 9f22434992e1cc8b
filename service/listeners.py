"""Stopping a listening socket without resetting a connection the kernel has already completed.

The kernel completes TCP handshakes on a listening socket by itself and queues the connections until the
process accepts them; when the last copy of the socket closes, every connection still queued is reset, and a
client that already sent its request on it reads ``Connection reset by peer``. A drain (``service.server``)
therefore accepts what is queued before it closes, but a client that connects between that last ``accept``
and the ``close`` (a client reconnecting at once after ``Connection: close``, or a process preempted between
the two calls on a loaded machine) still lands in the queue and is reset.

:func:`refuse_new` closes that window on Linux: it attaches a classic BPF socket filter that drops every
packet with SYN set and ACK clear, a new connection's first packet. Nothing else is dropped, so a handshake
already under way (SYN-ACK sent, its ACK still to come) completes and is queued, and connections already
established read and write as before. A client whose SYN was dropped retransmits it (after about a second)
and, the listener closed by then, gets a refusal; it never holds a connection that nobody will read.

The filter runs where ``tcp_filter`` runs in the kernel's receive path, where a TCP socket filter sees the
packet from its TCP header on: byte 13 is the flags (CWR ECE URG ACK PSH RST SYN FIN).
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct

logger = logging.getLogger(__name__)

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # <asm-generic/socket.h>
_ACK, _SYN = 0x10, 0x02
# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}; jumps count instructions skipped.
_PROGRAM = (
    (0x30, 0, 0, 13),  # ldb [13]               A = TCP flags
    (0x45, 1, 0, _ACK),  # jset #ACK, keep, next  any packet with ACK: keep
    (0x45, 1, 0, _SYN),  # jset #SYN, drop, keep  SYN without ACK: a new connection
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1            keep (the whole packet)
    (0x06, 0, 0, 0),  # ret #0                      drop
)
_FILTER = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *insn) for insn in _PROGRAM))


def duplicates(sockets: list[socket.socket]) -> list[socket.socket]:
    """Non-blocking duplicates of ``sockets``: they keep the listening sockets (and the connections queued
    on them) open after the server that owns the originals closes them."""
    dups = []
    for sock in sockets:
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        dup.setblocking(False)
        dups.append(dup)
    return dups


def refuse_new(sock: socket.socket) -> bool:
    """Drop new connection attempts (SYN without ACK) reaching the TCP listening socket ``sock`` from now on.

    Preconditions: ``sock`` is a TCP socket that no other component filters (the filter replaces any other);
    it is shared by every process holding the socket, so call it only when all of them stop accepting.
    Returns False, and changes nothing, where the platform has no socket filters (not Linux)."""
    if not hasattr(socket, "AF_PACKET"):  # Linux only (SO_ATTACH_FILTER means something else, or nothing)
        return False
    program = struct.pack("@HP", len(_PROGRAM), ctypes.addressof(_FILTER))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
    except OSError as exc:
        logger.warning(
            "cannot filter new connections on %s (%s): one arriving as it closes may be reset", sock.getsockname(), exc
        )
        return False
    return True
