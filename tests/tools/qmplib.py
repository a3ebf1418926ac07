"""A small QMP client for the project's own tests (standard library only)."""

import json
import socket
import time


class QmpError(RuntimeError):
    pass


class Qmp:
    """Connect to a QMP unix socket, waiting up to @timeout seconds.

    With @io_timeout, a read or write that takes longer raises
    TimeoutError (an OSError) instead of waiting on.
    """

    def __init__(self, path, timeout=10.0, io_timeout=None):
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(io_timeout)
        self.f = self.sock.makefile("rw")
        json.loads(self.f.readline())
        self.execute("qmp_capabilities")

    def execute(self, name, **args):
        """The command's return value; QmpError with its description."""
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise QmpError(f"{name}: QEMU closed the connection")
            reply = json.loads(line)
            if "event" in reply:
                continue
            if "QMP" in reply:
                # A second greeting: 7.2's monitor can greet a client
                # twice when it connects while the monitor's I/O thread
                # is still taking over the socket.
                continue
            if "error" in reply:
                raise QmpError(reply["error"].get("desc", str(reply)))
            if "return" not in reply:
                raise QmpError(f"{name}: unexpected reply {line.strip()}")
            return reply["return"]

    def close(self):
        self.sock.close()
