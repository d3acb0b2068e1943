"""Helpers the Python integration tests share (imported from the test's own folder)."""
import random
import socket


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server
    that binds it later. Picked at random below the kernel's ephemeral range
    (32768-60999 by default), which outgoing connections take their ports from:
    one of those could take a kernel-chosen port before the server binds it."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free TCP port between 20000 and 32000 on 127.0.0.1")
