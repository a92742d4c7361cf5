"""A loopback TCP proxy that can stop forwarding, like a proxy or network that hangs, or cut a
connection just as the server's answer passes, like a connection lost mid-response."""

from __future__ import annotations

import socket
import threading

from tests.support.processes import free_port


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
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
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, down), daemon=True).start()

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
