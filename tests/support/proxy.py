"""A loopback TCP proxy that can stop forwarding, like a proxy or network that hangs; cut a
connection just as the server's answer passes, like a connection lost mid-response; or cut
every connection and refuse new ones for a while, like a network partition."""

from __future__ import annotations

import socket
import threading

from tests.support.processes import free_port


class Proxy:
    def __init__(self, target_port: int, *, unix_path: str | None = None) -> None:
        """Forwards to 127.0.0.1:target_port, or to the Unix socket `unix_path`."""
        self.target_port = target_port
        self._unix_path = unix_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        self._cut: bytes | None = None
        self.cuts = 0  # answers swallowed by cut_next_answer
        self.refused = 0  # connections refused while partitioned
        self._partitioned = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_next_answer(self, containing: bytes) -> None:
        """Swallow the next data from the server holding `containing`, and close that
        connection on both sides: the server wrote its answer, the client never gets it."""
        self._cut = containing

    def hang(self) -> None:
        """Stop forwarding: bytes already sent and new connections go nowhere."""
        self.forwarding.clear()

    def resume(self) -> None:
        self.forwarding.set()

    def partition(self) -> None:
        """Cut every open connection and refuse new ones until heal(): each side sees its
        connections fail, as when a site loses its link."""
        self._partitioned = True
        self._cut_all()

    def heal(self) -> None:
        self._partitioned = False

    def _cut_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.forwarding.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._partitioned:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, down), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if self._unix_path is None:
            return socket.create_connection(("127.0.0.1", self.target_port))
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self._unix_path)
        except OSError:
            upstream.close()
            raise
        return upstream

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while data := src.recv(65536):
                self.forwarding.wait()
                if self._closed:
                    return
                if down and self._cut is not None and self._cut in data:
                    self._cut = None
                    self.cuts += 1
                    return  # the finally below closes both sides
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
