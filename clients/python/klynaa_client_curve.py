"""CURVE keys for the Klynaa Jobs Python client: Z85 checks, key files as
``klynaa keygen`` writes them, and the options of a CURVE client socket.

Part of :mod:`klynaa_client` (clients/python/klynaa_client.py), which
re-exports :func:`load_curve_key_file`: import from ``klynaa_client``.
docs/security.md describes the keys and the allow-list.
"""

import zmq

# ----------------------------------------------------------------------- CURVE

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}


def _as_z85_key(value):
    """``value`` (str or bytes) as Z85 key bytes when it is one (40 characters
    of the Z85 alphabet, every 5-character group below 2**32), else None."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) != 40:
        return None
    for g in range(0, 40, 5):
        v = 0
        for c in value[g:g + 5]:
            d = _Z85_INDEX.get(c)
            if d is None:
                return None
            v = v * 85 + d
        if v > 0xFFFFFFFF:
            return None
    return value.encode("ascii")


def load_curve_key_file(path):
    """Read a CURVE key file as ``klynaa keygen`` writes it (``NAME.key``: key
    pair; ``NAME.pub``: public key; ZPL with ``public-key = "..."`` and
    ``secret-key = "..."`` lines, like pyzmq's ``zmq.auth`` and czmq's zcert), or
    a file holding one bare Z85 public key.

    :returns: ``(public_key, secret_key)`` as Z85 ``bytes``; ``secret_key`` is
        ``None`` for a public key file; ``public_key`` is derived from the secret
        key when the file gives only that.
    :raises OSError: the file cannot be read.
    :raises ValueError: a malformed key (naming the line), a key given twice, no
        key at all, or a public key that does not belong to the secret key.
    """
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    found = {}
    bare = None
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if eq and name in ("public-key", "secret-key"):
            value = value.strip()
            if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
                value = value[1:-1]
            if name in found:
                raise ValueError("%s: line %d: %s is given twice" % (path, n, name))
            key = _as_z85_key(value)
            if key is None:
                raise ValueError("%s: line %d: %s: not a Z85 key of 40 characters" % (path, n, name))
            found[name] = key
            continue
        word = line.split()[0]
        key = _as_z85_key(word)
        if key is not None:
            if bare is not None:
                raise ValueError("%s: line %d: a second bare key; a key file holds one key pair" % (path, n))
            bare = key
    if bare is not None:
        if found:
            raise ValueError("%s: a bare key line beside public-key/secret-key lines" % path)
        found["public-key"] = bare
    if not found:
        raise ValueError("%s: no key found: expected a `public-key = \"...\"` line "
                         "(and `secret-key = \"...\"` in a key pair file)" % path)
    secret = found.get("secret-key")
    public = found.get("public-key")
    if secret is not None:
        derived = zmq.curve_public(secret)
        if public is not None and public != derived:
            raise ValueError("%s: its public-key does not belong to its secret-key" % path)
        public = derived
    return public, secret


def _curve_options(server_key, public_key, secret_key, key_file):
    """The (server, public, secret) Z85 bytes a CURVE client socket needs, or
    None when no CURVE parameter is given."""
    if server_key is None and public_key is None and secret_key is None and key_file is None:
        return None
    if not zmq.has("curve"):
        raise ValueError("CURVE keys given, but this pyzmq/libzmq has no CURVE support (libsodium)")
    if server_key is None:
        raise ValueError("curve_server_key (the broker's public key, or its key file) is required with CURVE")
    server = _as_z85_key(server_key)
    if server is None:
        path = server_key.decode() if isinstance(server_key, bytes) else str(server_key)
        try:
            server, _ = load_curve_key_file(path)
        except OSError as e:
            raise ValueError("curve_server_key: neither a Z85 key nor a readable key file: %s" % e)
    if key_file is not None:
        if public_key is not None or secret_key is not None:
            raise ValueError("give either curve_key_file or curve_public_key/curve_secret_key, not both")
        try:
            public, secret = load_curve_key_file(key_file)
        except OSError as e:
            raise ValueError("curve_key_file: %s" % e)
        if secret is None:
            raise ValueError("curve_key_file: %s holds no secret key: it is a public key file; "
                             "pass the key pair file (NAME.key)" % key_file)
        return server, public, secret
    if secret_key is None:
        raise ValueError("this client's key pair is required with CURVE: curve_key_file, or curve_secret_key")
    secret = _as_z85_key(secret_key)
    if secret is None:
        raise ValueError("curve_secret_key: not a Z85 key of 40 characters")
    derived = zmq.curve_public(secret)
    if public_key is not None:
        public = _as_z85_key(public_key)
        if public is None:
            raise ValueError("curve_public_key: not a Z85 key of 40 characters")
        if public != derived:
            raise ValueError("curve_public_key does not belong to curve_secret_key")
    return server, derived, secret
