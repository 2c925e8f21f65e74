"""tools/ws_client.py reads what ComfyUI's /ws sends: text, large binary, fragmented messages, ping, close."""

from __future__ import annotations

import socket
import struct

import pytest
from ws_client import OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, WebSocket, WebSocketClosed


def server_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    """An unmasked frame as a server writes it, with the 7-bit, 16-bit or 64-bit length form."""
    head = bytes([(0x80 if final else 0) | opcode])
    if len(payload) < 126:
        head += bytes([len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([127]) + struct.pack("!Q", len(payload))
    return head + payload


def unmask_client_frame(data: bytes) -> tuple[int, bytes]:
    assert data[1] & 0x80, "a client must mask its frames"
    length, mask = data[1] & 0x7F, data[2:6]
    return data[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data[6 : 6 + length]))


@pytest.fixture
def pair():
    client_sock, server_sock = socket.socketpair()
    client_sock.settimeout(5)
    yield WebSocket(client_sock), server_sock
    client_sock.close()
    server_sock.close()


def test_text_and_binary_messages_in_all_three_length_forms(pair):
    ws, server = pair
    big = bytes(range(256)) * 300  # 76,800 bytes: the 64-bit length form
    server.sendall(
        server_frame(OP_TEXT, b'{"type": "status"}')
        + server_frame(OP_BINARY, b"x" * 300)
        + server_frame(OP_BINARY, big)
    )
    assert ws.recv() == '{"type": "status"}'
    assert ws.recv() == b"x" * 300
    assert ws.recv() == big


def test_a_fragmented_text_message_is_joined_and_a_ping_in_between_is_answered(pair):
    ws, server = pair
    server.sendall(
        server_frame(OP_TEXT, b'{"a":', final=False)
        + server_frame(OP_PING, b"hi")
        + server_frame(OP_CONTINUATION, b" 1}")
    )
    assert ws.recv() == '{"a": 1}'
    assert unmask_client_frame(server.recv(64)) == (OP_PONG, b"hi")


def test_a_close_frame_raises(pair):
    ws, server = pair
    server.sendall(server_frame(OP_CLOSE, struct.pack("!H", 1000)))
    with pytest.raises(WebSocketClosed):
        ws.recv()
