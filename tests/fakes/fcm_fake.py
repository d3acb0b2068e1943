#!/usr/bin/python3
"""A local fake of Google's OAuth2 token endpoint and FCM HTTP v1, for tests.

It verifies what it receives with libraries independent of Klynaa's C++:

* ``POST /token`` (the OAuth2 JWT-bearer grant of a service account, RFC 7523):
  the form must carry ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``
  and an ``assertion`` whose RS256 signature PyJWT (Debian's python3-jwt)
  accepts against the service account's public key, with ``iss`` = the
  account's ``client_email``, ``aud`` = this token URL, a ``scope`` naming
  FCM's (``https://www.googleapis.com/auth/firebase.messaging``), ``iat``
  within 5 minutes of now and ``exp`` at most 1 hour after ``iat`` and not
  past. It answers ``{"access_token", "expires_in", "token_type"}``, or 400
  ``{"error": "invalid_grant", "error_description"}`` as Google does.
* ``POST /v1/projects/{project}/messages:send``: the bearer token must be one
  this fake issued and not expired (else 401 UNAUTHENTICATED), the project the
  configured one (else 403 PERMISSION_DENIED), the body FCM v1 JSON (one
  ``message`` with exactly one of token/topic/condition, ``notification``
  title/body strings, ``data`` values strings, no reserved data keys, no unknown
  fields; else 400 INVALID_ARGUMENT). A token configured as unregistered gets
  404 NOT_FOUND with the FcmError ``UNREGISTERED`` detail; any other gets 200
  ``{"name": "projects/{project}/messages/{id}"}``.

Everything accepted and refused is recorded, in order: ``GET /_received``
answers ``{"requests": [...]}``, each entry
``{"seq", "at", "endpoint": "token"|"send", "accepted", "status", "error",
"reason", ...}`` with, for a token request, the verified ``claims`` and the
``access_token`` issued, and for a send, ``project``, ``access_token``,
``token`` and ``message`` (as received, also when refused). ``POST /_reset`` clears the record.
``POST /_unregistered`` with ``{"tokens": [...]}`` adds unregistered tokens;
``POST /_revoke`` revokes every access token issued so far (their next send
gets 401, as an expired or revoked token does at Google).

Use it in-process::

    fake = FcmFake(public_key_pem, client_email="sa@p.iam.gserviceaccount.com",
                   project="p", unregistered={"dead-token"})
    fake.start()            # 127.0.0.1, a free port; fake.url, fake.token_url
    ... fake.received() ...
    fake.stop()

or as a process (prints ``READY http://127.0.0.1:PORT`` when it listens)::

    /usr/bin/python3 tests/fakes/fcm_fake.py --service-account key.json \\
        [--project P] [--unregistered TOKEN]... [--port 0]

Only 127.0.0.1 is ever bound. Needs python3-jwt and python3-cryptography.
"""
import argparse
import json
import re
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_LIFETIME_S = 3600
MAX_SKEW_S = 300
SEND_RE = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token",
                  "topic", "condition"}
RESERVED_DATA = {"from", "notification", "message_type"}
MAX_BODY = 1 << 20


def public_key_of(private_key_pem):
    """The PEM public key of a PEM private key (a service account's "private_key")."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def google_error(code, status, message, details=None):
    err = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


class FcmFake:
    def __init__(self, public_key_pem, client_email, project, unregistered=(), expires_in=3599,
                 token_path="/token", port=0):
        self.public_key_pem = public_key_pem
        self.client_email = client_email
        self.project = project
        self.unregistered = set(unregistered)
        self.expires_in = expires_in
        self.token_path = token_path
        self._port = port
        self._lock = threading.Lock()
        self._records = []
        self._issued = {}  # access token -> expiry (epoch s)
        self._server = None
        self._thread = None

    # ---- lifecycle

    def start(self):
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def token_url(self):
        return self.url + self.token_path

    # ---- record

    def received(self):
        with self._lock:
            return [dict(r) for r in self._records]

    def reset(self):
        with self._lock:
            self._records.clear()

    def add_unregistered(self, *tokens):
        with self._lock:
            self.unregistered.update(tokens)

    def revoke_access_tokens(self):
        """Forgets every access token issued so far: their next send gets 401."""
        with self._lock:
            self._issued.clear()

    def _record(self, entry):
        with self._lock:
            entry["seq"] = len(self._records) + 1
            entry["at"] = time.time()
            self._records.append(entry)

    # ---- the two endpoints; each returns (status, JSON body, record entry)

    def handle_token(self, headers, body):
        rec = {"endpoint": "token"}

        def refuse(error, description, status=400):
            rec.update(accepted=False, status=status, error=error, reason=description)
            return status, {"error": error, "error_description": description}, rec

        ctype = headers.get("Content-Type", "")
        if not ctype.startswith("application/x-www-form-urlencoded"):
            return refuse("invalid_request", "Content-Type must be application/x-www-form-urlencoded, got %r"
                          % ctype)
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as e:
            return refuse("invalid_request", "The form body cannot be parsed: %s" % e)
        if any(len(v) != 1 for v in form.values()):
            return refuse("invalid_request", "A form parameter is repeated.")
        grant = form.get("grant_type", [""])[0]
        if grant != JWT_BEARER:
            return refuse("unsupported_grant_type", "Invalid grant_type: %s" % grant)
        assertion = form.get("assertion", [""])[0]
        if not assertion:
            return refuse("invalid_request", "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, self.public_key_pem, algorithms=["RS256"], audience=self.token_url,
                                issuer=self.client_email,
                                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
                                leeway=MAX_SKEW_S)
        except jwt.InvalidSignatureError:
            return refuse("invalid_grant", "Invalid JWT Signature.")
        except jwt.PyJWTError as e:
            return refuse("invalid_grant", "Invalid JWT: %s: %s" % (type(e).__name__, e))
        rec["claims"] = claims
        rec["header"] = header
        if header.get("typ") not in (None, "JWT"):
            return refuse("invalid_grant", "Invalid JWT: typ %r" % header.get("typ"))
        now = time.time()
        iat, exp = claims["iat"], claims["exp"]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (iat, exp)):
            return refuse("invalid_grant", "Invalid JWT: iat and exp must be integers.")
        if abs(iat - now) > MAX_SKEW_S or exp <= iat or exp - iat > MAX_LIFETIME_S:
            return refuse("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                          "reasonable timeframe. Check your iat and exp values in the JWT claim.")
        scopes = str(claims["scope"]).split()
        if FCM_SCOPE not in scopes and CLOUD_SCOPE not in scopes:
            return refuse("invalid_scope", "The JWT's scope %r does not allow FCM sends." % claims["scope"])
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._issued[token] = now + self.expires_in
        rec.update(accepted=True, status=200, error=None, reason=None, access_token=token)
        return 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}, rec

    def handle_send(self, project, headers, body):
        rec = {"endpoint": "send", "project": project}

        def refuse(status, gstatus, message, details=None, error=None):
            rec.update(accepted=False, status=status, error=error or gstatus, reason=message)
            return status, google_error(status, gstatus, message, details), rec

        try:  # recorded as received, also when refused below
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            doc, bad_json = None, e
        else:
            bad_json = None
            if isinstance(doc, dict) and isinstance(doc.get("message"), dict):
                rec["message"] = doc["message"]
                rec["token"] = doc["message"].get("token")
        auth = headers.get("Authorization", "")
        access = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        rec["access_token"] = access
        with self._lock:
            expiry = self._issued.get(access)
        if not access or expiry is None or expiry < time.time():
            return refuse(401, "UNAUTHENTICATED",
                          "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                          "login cookie or other valid authentication credential.")
        if project != self.project:
            return refuse(403, "PERMISSION_DENIED",
                          "Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager."
                          "googleapis.com/projects/%s' (or it may not exist)." % project)
        if not headers.get("Content-Type", "").startswith("application/json"):
            return refuse(400, "INVALID_ARGUMENT", "Content-Type must be application/json.")
        if bad_json is not None:
            return refuse(400, "INVALID_ARGUMENT", "Invalid JSON payload received. %s" % bad_json)

        def bad_field(field, why):
            return refuse(400, "INVALID_ARGUMENT", why,
                          [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [{"field": field, "description": why}]}])

        if not isinstance(doc, dict) or set(doc) - {"message", "validate_only"}:
            return bad_field("", "Invalid JSON payload received. Unknown name at top level.")
        msg = doc.get("message")
        if not isinstance(msg, dict):
            return bad_field("message", "The message is missing.")
        rec["message"] = msg
        unknown = set(msg) - MESSAGE_FIELDS
        if unknown:
            return bad_field("message", "Invalid JSON payload received. Unknown name %r at 'message': Cannot find "
                             "field." % sorted(unknown)[0])
        targets = [k for k in ("token", "topic", "condition") if k in msg]
        if len(targets) != 1:
            return bad_field("message", "Exactly one of token, topic or condition must be set.")
        token = msg.get("token")
        if "token" in msg and (not isinstance(token, str) or not token):
            return bad_field("message.token", "The registration token is not a valid FCM registration token")
        rec["token"] = token
        note = msg.get("notification", {})
        if not isinstance(note, dict) or set(note) - {"title", "body", "image"} or \
                not all(isinstance(v, str) for v in note.values()):
            return bad_field("message.notification", "notification must map title/body/image to strings.")
        data = msg.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            return bad_field("message.data", "Invalid value at 'message.data': every value must be a string.")
        for k in data:
            if k in RESERVED_DATA or k.startswith("google") or k.startswith("gcm"):
                return bad_field("message.data", "Invalid data payload key: %s" % k)
        with self._lock:
            unregistered = token in self.unregistered
        if unregistered:
            return refuse(404, "NOT_FOUND", "Requested entity was not found.",
                          [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                            "errorCode": "UNREGISTERED"}], error="UNREGISTERED")
        name = "projects/%s/messages/0:%d%%%s" % (project, int(time.time() * 1000), secrets.token_hex(8))
        rec.update(accepted=True, status=200, error=None, reason=None, name=name)
        return 200, {"name": name}, rec


class _Handler(BaseHTTPRequestHandler):
    owner = None  # the FcmFake, set by a subclass
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, fmt, *args):
        pass

    def _reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n > 0 else b""

    def do_GET(self):
        if self.path == "/_received":
            return self._reply(200, {"requests": self.owner.received()})
        self._reply(404, google_error(404, "NOT_FOUND", "No route for GET %s" % self.path))

    def do_POST(self):
        try:
            body = self._body()
        except ValueError:
            self.close_connection = True
            return self._reply(413, google_error(413, "INVALID_ARGUMENT", "Request too large."))
        path = self.path.split("?", 1)[0]
        f = self.owner
        if path == "/_reset":
            f.reset()
            return self._reply(200, {})
        if path == "/_revoke":
            f.revoke_access_tokens()
            return self._reply(200, {})
        if path == "/_unregistered":
            f.add_unregistered(*json.loads(body or b"{}").get("tokens", []))
            return self._reply(200, {"unregistered": sorted(f.unregistered)})
        if path == f.token_path:
            status, obj, rec = f.handle_token(self.headers, body)
        elif SEND_RE.match(path):
            project = urllib.parse.unquote(SEND_RE.match(path).group(1))
            status, obj, rec = f.handle_send(project, self.headers, body)
        else:
            status, obj, rec = 404, google_error(404, "NOT_FOUND", "No route for POST %s" % path), \
                {"endpoint": "unknown", "path": path, "accepted": False, "status": 404, "error": "NOT_FOUND",
                 "reason": "no such route"}
        f._record(rec)
        self._reply(status, obj)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Google OAuth2 token endpoint and FCM HTTP v1 (127.0.0.1 only).")
    ap.add_argument("--service-account", required=True,
                    help="the service account JSON key file (client_email, private_key, project_id)")
    ap.add_argument("--project", help="the FCM project (default: the key file's project_id)")
    ap.add_argument("--unregistered", action="append", default=[], help="a token answered UNREGISTERED")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    with open(args.service_account) as f:
        account = json.load(f)
    fake = FcmFake(public_key_of(account["private_key"]), account["client_email"],
                   args.project or account["project_id"], unregistered=args.unregistered, port=args.port)
    fake.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("READY %s token_url=%s" % (fake.url, fake.token_url), flush=True)
    while not stop.wait(0.2):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
