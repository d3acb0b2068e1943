#!/usr/bin/python3
"""A local fake of Amazon SNS's Query API (``Publish``), for tests.

Every request's AWS Signature Version 4 is recomputed with botocore (Debian's
python3-botocore), independently of Klynaa's C++ signer: an ``AWSRequest`` is
built from what arrived (method, ``http://{Host}{path}``, the headers the
client listed in ``SignedHeaders``, the body), ``SigV4Auth`` signs it with the
fake's credentials and region at the request's own ``X-Amz-Date``, and the
signature must match the one in ``Authorization``. Before that the fake checks,
as AWS does: the ``Authorization`` header's form, the access key
(``InvalidClientTokenId``), the credential scope (date = X-Amz-Date's day,
region, service ``sns``, ``aws4_request``), that ``host`` and ``x-amz-date``
are signed, the session token when one is configured, and that ``X-Amz-Date``
is within 15 minutes of now. A mismatch is refused with 403 and SNS's XML
error (``<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch``
...), which botocore's own client parses.

Then the form body: ``Action=Publish``, ``Version=2010-03-31``, ``TargetArn``
a platform endpoint ARN of the fake's region (``InvalidParameter`` otherwise),
``Message`` and ``MessageStructure=json`` (the message a JSON object with a
string ``default`` and string values, each platform's value itself JSON).
A target ARN configured as disabled gets 400 ``EndpointDisabled``
("Endpoint is disabled"); any other gets 200 with the ``PublishResponse`` XML.

Everything accepted and refused is recorded, in order: ``GET /_received``
answers ``{"requests": [...]}``, each entry ``{"seq", "at", "accepted",
"status", "error", "reason", "access_key", "signed_headers", "amz_date",
"params", "message"}`` (``message`` is the parsed Message with each platform
payload parsed too). ``POST /_reset`` clears the record; ``POST /_disabled``
with ``{"arns": [...]}`` disables more endpoints.

In-process::

    fake = SnsFake("AKIDEXAMPLE", "secret", "eu-west-1", disabled={arn})
    fake.start()            # 127.0.0.1, a free port; fake.url
    ... fake.received() ...
    fake.stop()

or as a process (prints ``READY http://127.0.0.1:PORT``)::

    /usr/bin/python3 tests/fakes/sns_fake.py --access-key AK --secret-key SK \\
        --region eu-west-1 [--session-token T] [--disabled ARN]... [--port 0]

Only 127.0.0.1 is ever bound.
"""
import argparse
import calendar
import hmac
import json
import re
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

XMLNS = "http://sns.amazonaws.com/doc/2010-03-31/"
AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^,]+),\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})$")
MAX_SKEW_S = 15 * 60
MAX_BODY = 1 << 20
SIGNATURE_MESSAGE = ("The request signature we calculated does not match the signature you provided. Check your "
                     "AWS Secret Access Key and signing method. Consult the service documentation for details.")


def error_xml(code, message, kind="Sender"):
    return ('<ErrorResponse xmlns="%s">\n  <Error>\n    <Type>%s</Type>\n    <Code>%s</Code>\n'
            '    <Message>%s</Message>\n  </Error>\n  <RequestId>%s</RequestId>\n</ErrorResponse>\n'
            % (XMLNS, kind, escape(code), escape(message), uuid.uuid4())).encode()


def publish_xml(message_id):
    return ('<PublishResponse xmlns="%s">\n  <PublishResult>\n    <MessageId>%s</MessageId>\n'
            '  </PublishResult>\n  <ResponseMetadata>\n    <RequestId>%s</RequestId>\n'
            '  </ResponseMetadata>\n</PublishResponse>\n' % (XMLNS, message_id, uuid.uuid4())).encode()


class Refused(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class SnsFake:
    def __init__(self, access_key, secret_key, region, session_token=None, disabled=(), port=0):
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.session_token = session_token or None
        self.disabled = set(disabled)
        self._port = port
        self._lock = threading.Lock()
        self._records = []
        self._server = None
        self._thread = None
        self.endpoint_arn_re = re.compile(r"^arn:aws:sns:%s:\d{12}:endpoint/[A-Z_]+/[^/]+/[0-9a-f-]+$"
                                          % re.escape(region))

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

    # ---- record

    def received(self):
        with self._lock:
            return [dict(r) for r in self._records]

    def reset(self):
        with self._lock:
            self._records.clear()

    def add_disabled(self, *arns):
        with self._lock:
            self.disabled.update(arns)

    def _record(self, entry):
        with self._lock:
            entry["seq"] = len(self._records) + 1
            entry["at"] = time.time()
            self._records.append(entry)

    # ---- verification

    def verify_signature(self, method, path, headers, body, rec):
        """Raises Refused unless `headers`' SigV4 signature is botocore's for this request."""
        auth = headers.get("Authorization")
        if not auth:
            raise Refused(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
        m = AUTH_RE.match(auth.strip())
        if not m:
            raise Refused(400, "IncompleteSignature", "Authorization header requires Credential, SignedHeaders "
                          "and Signature parameters, with the AWS4-HMAC-SHA256 algorithm.")
        credential, signed_headers, signature = m.groups()
        parts = credential.split("/")
        if len(parts) != 5:
            raise Refused(400, "IncompleteSignature", "Credential must have the form "
                          "AKID/YYYYMMDD/region/service/aws4_request, got %r" % credential)
        access_key, date, region, service, terminator = parts
        rec["access_key"] = access_key
        rec["signed_headers"] = signed_headers
        amz_date = headers.get("X-Amz-Date", "")
        rec["amz_date"] = amz_date
        if access_key != self.access_key:
            raise Refused(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
        if not re.fullmatch(r"\d{8}T\d{6}Z", amz_date):
            raise Refused(400, "IncompleteSignature", "X-Amz-Date must be YYYYMMDDTHHMMSSZ, got %r" % amz_date)
        if (date, region, service, terminator) != (amz_date[:8], self.region, "sns", "aws4_request"):
            raise Refused(403, "SignatureDoesNotMatch", "Credential should be scoped to %s/%s/sns/aws4_request, "
                          "not %s/%s/%s/%s." % (amz_date[:8], self.region, date, region, service, terminator))
        names = signed_headers.split(";")
        if names != sorted(set(names)) or any(n != n.lower() for n in names):
            raise Refused(403, "SignatureDoesNotMatch", "SignedHeaders must be lower-case, sorted and unique.")
        for required in ("host", "x-amz-date"):
            if required not in names:
                raise Refused(403, "SignatureDoesNotMatch", "Header %s must be signed." % required)
        token = headers.get("X-Amz-Security-Token")
        if token != self.session_token or (token and "x-amz-security-token" not in names):
            raise Refused(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
        when = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        if abs(when - time.time()) > MAX_SKEW_S:
            raise Refused(403, "SignatureDoesNotMatch", "Signature expired: %s is now earlier or later than "
                          "15 minutes from now." % amz_date)
        # botocore re-adds X-Amz-Date (from the timestamp) and the token (from the credentials).
        to_sign = {}
        for name in names:
            if name in ("x-amz-date", "x-amz-security-token"):
                continue
            values = headers.get_all(name)
            if values is None:
                raise Refused(403, "SignatureDoesNotMatch", "Signed header %s is missing." % name)
            to_sign[name] = ",".join(values)
        request = AWSRequest(method=method, url="http://%s%s" % (headers.get("Host"), path), headers=to_sign,
                             data=body)
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key, self.session_token), "sns", self.region)
        signer._modify_request_before_signing(request)
        expected_headers = signer.signed_headers(signer.headers_to_sign(request))
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        rec["canonical_request"] = canonical
        if expected_headers != signed_headers or not hmac.compare_digest(expected, signature):
            raise Refused(403, "SignatureDoesNotMatch", SIGNATURE_MESSAGE)

    def handle(self, method, path, headers, body):
        """-> (status, XML body, record entry)."""
        rec = {"method": method, "path": path}
        try:
            if method != "POST":
                raise Refused(400, "InvalidAction", "Only POST is supported by this fake.")
            self.verify_signature(method, path, headers, body, rec)
            if not headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                raise Refused(400, "InvalidParameter", "Content-Type must be application/x-www-form-urlencoded.")
            try:
                pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
            except (UnicodeDecodeError, ValueError) as e:
                raise Refused(400, "MalformedQueryString", "The form body cannot be parsed: %s" % e)
            params = dict(pairs)
            rec["params"] = params
            if len(params) != len(pairs):
                raise Refused(400, "MalformedQueryString", "A parameter is repeated.")
            if params.get("Action") != "Publish":
                raise Refused(400, "InvalidAction", "The action %s is not valid for this endpoint."
                              % params.get("Action"))
            if params.get("Version") != "2010-03-31":
                raise Refused(400, "InvalidParameter", "Invalid parameter: Version")
            unknown = set(params) - {"Action", "Version", "TargetArn", "Message", "MessageStructure", "Subject"}
            if unknown:
                raise Refused(400, "InvalidParameter", "Invalid parameter: %s" % sorted(unknown)[0])
            arn = params.get("TargetArn", "")
            if not self.endpoint_arn_re.match(arn):
                raise Refused(400, "InvalidParameter", "Invalid parameter: TargetArn Reason: %r is not a platform "
                              "endpoint ARN of %s" % (arn, self.region))
            if "Message" not in params:
                raise Refused(400, "ValidationError", "1 validation error detected: Value null at 'message' "
                              "failed to satisfy constraint: Member must not be null")
            rec["message"] = self.parse_message(params["Message"], params.get("MessageStructure"))
            with self._lock:
                disabled = arn in self.disabled
            if disabled:
                raise Refused(400, "EndpointDisabled", "Endpoint is disabled")
            message_id = str(uuid.uuid4())
            rec.update(accepted=True, status=200, error=None, reason=None, message_id=message_id)
            return 200, publish_xml(message_id), rec
        except Refused as r:
            rec.update(accepted=False, status=r.status, error=r.code, reason=r.message)
            return r.status, error_xml(r.code, r.message), rec

    @staticmethod
    def parse_message(text, structure):
        if structure is None:
            return {"default": text}
        if structure != "json":
            raise Refused(400, "InvalidParameter", "Invalid parameter: MessageStructure")
        try:
            doc = json.loads(text)
        except ValueError:
            raise Refused(400, "InvalidParameter", "Invalid parameter: Message Structure - JSON message body "
                          "failed to parse")
        if not isinstance(doc, dict) or not isinstance(doc.get("default"), str):
            raise Refused(400, "InvalidParameter", "Invalid parameter: Message Structure - No default entry in "
                          "JSON message body")
        out = {"default": doc["default"]}
        for platform, payload in doc.items():
            if platform == "default":
                continue
            if not isinstance(payload, str):
                raise Refused(400, "InvalidParameter", "Invalid parameter: Message Structure - the %s value "
                              "must be a string" % platform)
            try:
                out[platform] = json.loads(payload)
            except ValueError:
                raise Refused(400, "InvalidParameter", "Invalid parameter: Message Structure - the %s value "
                              "is not JSON" % platform)
        return out


class _Handler(BaseHTTPRequestHandler):
    owner = None  # the SnsFake, set by a subclass
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, fmt, *args):
        pass

    def _reply(self, status, data, ctype="text/xml"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n > 0 else b""

    def do_GET(self):
        if self.path == "/_received":
            data = json.dumps({"requests": self.owner.received()}).encode()
            return self._reply(200, data, "application/json")
        self._serve(b"")

    def do_POST(self):
        try:
            body = self._body()
        except ValueError:
            self.close_connection = True
            return self._reply(413, error_xml("RequestEntityTooLarge", "Request too large."))
        if self.path == "/_reset":
            self.owner.reset()
            return self._reply(200, b"{}", "application/json")
        if self.path == "/_disabled":
            self.owner.add_disabled(*json.loads(body or b"{}").get("arns", []))
            return self._reply(200, json.dumps({"disabled": sorted(self.owner.disabled)}).encode(),
                               "application/json")
        self._serve(body)

    def _serve(self, body):
        status, data, rec = self.owner.handle(self.command, self.path, self.headers, body)
        self.owner._record(rec)
        self._reply(status, data)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Amazon SNS Publish with SigV4 checks (127.0.0.1 only).")
    ap.add_argument("--access-key", required=True)
    ap.add_argument("--secret-key", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--session-token")
    ap.add_argument("--disabled", action="append", default=[], help="an endpoint ARN answered EndpointDisabled")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    fake = SnsFake(args.access_key, args.secret_key, args.region, args.session_token, args.disabled, args.port)
    fake.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("READY %s" % fake.url, flush=True)
    while not stop.wait(0.2):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
