"""A TCP proxy in front of the test server, so that a test can take the network away from
one store without touching the server that other tests and sessions use.

``cut()`` closes every connection through it and refuses new ones until ``restore()``.
``lose_commit("before" | "after")`` closes the next connection that sends the COMMIT of
a write transaction (one begun with ``BEGIN ISOLATION LEVEL READ COMMITTED``, as ferromem
begins its writes; its reads begin ``REPEATABLE READ, READ ONLY``), without forwarding it
("before": the server rolls the transaction back) or right after forwarding it ("after":
the server commits, and the client never hears so).
"""

from __future__ import annotations

import socket
import threading

COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"
WRITE_BEGIN = b"BEGIN ISOLATION LEVEL READ COMMITTED"


class TcpProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.refusing = False
        self.commit_trap: str | None = None
        self.commits_lost = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # ------------------------------------------------------------------ control

    def cut(self) -> None:
        with self.lock:
            self.refusing = True
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            self._close(pair)

    def restore(self) -> None:
        with self.lock:
            self.refusing = False

    def lose_commit(self, when: str) -> None:
        assert when in ("before", "after")
        with self.lock:
            self.commit_trap = when

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()

    # ------------------------------------------------------------------ plumbing

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refusing = self.refusing
            if refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = (client, server)
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, server, client, False), daemon=True).start()

    def _pump(self, pair, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        writing = False  # (upstream) inside a write transaction
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                trap = None
                if upstream and WRITE_BEGIN in data:
                    writing = True
                if upstream and writing and COMMIT_MESSAGE in data[data.rfind(WRITE_BEGIN) + 1 :]:
                    writing = False
                    with self.lock:
                        trap, self.commit_trap = self.commit_trap, None
                if trap is None:
                    sink.sendall(data)
                    continue
                with self.lock:
                    self.commits_lost += 1
                # The client's side goes first, so that no answer to the COMMIT can reach it.
                self._shut(source)
                if trap == "after":
                    sink.sendall(data)
                break
        except OSError:
            pass
        self._close(pair)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close(self, pair) -> None:
        with self.lock:
            if pair in self.pairs:
                self.pairs.remove(pair)
        for sock in pair:
            self._shut(sock)
            sock.close()
