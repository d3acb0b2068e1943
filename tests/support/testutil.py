"""Helpers the Python tests share: a free port, waiting on a condition, and
children that die with the test. Tests put this folder on sys.path:

    sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
    from testutil import die_with_parent, free_port, wait_for
"""
import ctypes
import random
import signal
import socket
import time

_libc = ctypes.CDLL(None, use_errno=True)


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


def wait_for(cond, timeout, step=0.05):
    """Asks `cond` every `step` seconds until it holds or `timeout` seconds have
    passed, and once more at the end; returns whether it held."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def die_with_parent():
    """A subprocess.Popen preexec_fn: the child gets SIGKILL when this test
    process dies (PR_SET_PDEATHSIG), so a killed test leaves no orphans."""
    _libc.prctl(1, signal.SIGKILL)
