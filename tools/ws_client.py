"""A minimal websocket client (RFC 6455) on the standard library, enough to follow ComfyUI's `/ws` messages.

The headless runner must work with requirements.txt alone, so it cannot rely on websocket-client. This covers what
ComfyUI's server sends on a loopback connection: text and binary messages (possibly fragmented), ping and close.
No TLS, no extensions, no proxies.

    ws = WebSocket.connect("127.0.0.1", 8188, "/ws?clientId=abc", timeout=30)
    message = ws.recv()    # str for text, bytes for binary
    ws.close()
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # fixed by RFC 6455 docs/architecture.md, ComfyUI integration
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(ConnectionError):
    """The server closed the connection."""


class WebSocket:
    def __init__(self, sock: socket.socket, buffered: bytes = b""):
        self.sock, self.buffer = sock, buffered

    @classmethod
    def connect(cls, host: str, port: int, path: str, timeout: float = 30.0) -> "WebSocket":
        sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                raise WebSocketClosed(f"the server closed the connection during the handshake: {response!r}")
            response += chunk
        head, rest = response.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != accept:
            sock.close()
            raise ConnectionError(f"websocket handshake refused: {lines[0]}")
        return cls(sock, rest)

    def settimeout(self, seconds: float) -> None:
        self.sock.settimeout(seconds)

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(max(65536, count - len(self.buffer)))
            if not chunk:
                raise WebSocketClosed("the server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        """(final, opcode, payload) of the next frame."""
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        mask = self._read(4) if second & 0x80 else None
        payload = self._read(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """One final frame; a client masks everything it sends (RFC 6455 docs/architecture.md, tests)."""
        mask = os.urandom(4)
        length = len(payload)
        header = bytes([0x80 | opcode])
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> str | bytes:
        """The next whole message: str for a text message, bytes for a binary one."""
        message_opcode, parts = None, []
        while True:
            final, opcode, payload = self._frame()
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                raise WebSocketClosed("the server closed the websocket")
            if opcode != OP_CONTINUATION:
                message_opcode, parts = opcode, []
            parts.append(payload)
            if final:
                data = b"".join(parts)
                return data.decode("utf-8") if message_opcode == OP_TEXT else data

    def close(self) -> None:
        try:
            self.send(OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()
