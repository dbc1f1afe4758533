"""A TCP relay between a client and a server whose open flows can be cut the ways a network loses a connection
without the server saying goodbye: reset on the client's next byte (a failover that gave the server's address to a
new machine, which knows no such connection), or silent (a NAT or firewall that forgot the flow: bytes go nowhere);
or silent from a given message on (``cut_at``: a server that went quiet as it was sent a COMMIT, before or after
taking it). New connections can be refused (``refusing``: a server unreachable for now) or left unanswered
(``silencing``: a server that stopped answering)."""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType

PASS, RESET, SILENT = "pass", "reset", "silent"


class TcpCut:
    """Listens on 127.0.0.1:``port`` and relays each accepted connection to ``target``. ``cut(mode)`` changes what
    the flows open now do with the client's next bytes; flows opened after it pass as before."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flows: list[_Flow] = []
        self._lock = threading.Lock()
        self._closed = False
        #: new connections are closed at once instead of relayed (open ones are not touched)
        self.refusing = False
        #: new connections are taken and their bytes go nowhere (a server that stopped answering)
        self.silencing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def flows(self) -> int:
        with self._lock:
            return len(self._flows)

    def cut(self, mode: str) -> None:
        with self._lock:
            for flow in self._flows:
                flow.mode = mode

    def cut_at(self, marker: bytes, *, forwarded: bool) -> None:
        """The flows open now go silent both ways at the first client bytes holding ``marker``; those bytes reach
        the server when ``forwarded`` (it takes the message, and its answer goes nowhere), else they do not."""
        with self._lock:
            for flow in self._flows:
                flow.trigger = (marker, forwarded)

    def drop(self) -> None:
        """Close every open flow at both ends (as a server that died would); new connections are relayed still."""
        with self._lock:
            flows, self._flows = self._flows, []
        for flow in flows:
            flow.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for flow in self._flows:
                flow.close()

    def __enter__(self) -> TcpCut:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the server is down: the client's connection is closed (the next one is relayed)
                client.close()
                continue
            flow = _Flow(client, upstream)
            flow.mode = SILENT if self.silencing else PASS
            with self._lock:
                self._flows.append(flow)
            threading.Thread(target=flow.to_server, daemon=True).start()
            threading.Thread(target=flow.to_client, daemon=True).start()


class _Flow:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.mode = PASS
        self.trigger: tuple[bytes, bool] | None = None

    def to_server(self) -> None:
        try:
            while data := self.client.recv(65536):
                if self.trigger is not None and self.trigger[0] in data:
                    forwarded, self.trigger = self.trigger[1], None
                    self.mode = SILENT
                    if forwarded:
                        self.upstream.sendall(data)
                    continue
                if self.mode == SILENT:
                    continue
                if self.mode == RESET:  # an RST, not a FIN: the client's read fails with ECONNRESET
                    self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close(reset=True)
                    return
                self.upstream.sendall(data)
        except OSError:
            pass
        self.close()

    def to_client(self) -> None:
        try:
            while data := self.upstream.recv(65536):
                if self.mode == PASS:
                    self.client.sendall(data)
        except OSError:
            pass

    def close(self, *, reset: bool = False) -> None:
        """Close both ends; ``reset``: the client's with an RST (its linger set to 0 by the caller)."""
        for sock in (self.client, self.upstream):
            try:  # shut down first: a close alone, while the other thread reads the socket, sends no FIN
                if not (reset and sock is self.client):
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
