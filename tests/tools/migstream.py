"""Pieces of a migration stream for the project's own tests (7.2 layout)."""

import struct

QEVM_HEADER = struct.pack(">II", 0x5145564D, 3)
SECTION_EOF = 0x00
SECTION_COMMAND = 0x08


def command(cmd, payload, length=None):
    """A command section; @length overrides the real payload length."""
    if length is None:
        length = len(payload)
    return bytes([SECTION_COMMAND]) + struct.pack(">HH", cmd, length) + payload
