#!/usr/bin/python3
"""Reference AWS Signature Version 4 signatures from botocore, for sns_test.cpp.

Run with Debian's python3 and python3-botocore. Reads one JSON object on stdin,
writes one JSON object on stdout. Nothing leaves the machine: the SNS client's
request is captured by a before-send hook that answers it locally.

  sigv4_reference.py publish   {"endpoint_url", "region", "access_key", "secret_key",
                                "token" (optional), "timestamp" ("YYYYMMDDTHHMMSSZ"),
                                "target_arn", "message"}
      -> {"body", "headers": {name: value}}: what botocore's own SNS client sends
         for publish(TargetArn=, Message=, MessageStructure="json") at that time.

  sigv4_reference.py sign      {"method", "url", "headers": {name: value}, "body",
                                "region", "service", "access_key", "secret_key",
                                "token" (optional), "timestamp"}
      -> {"authorization", "canonical_request", "string_to_sign", "headers"}:
         SigV4Auth over exactly that request.
"""
import datetime
import json
import sys
from unittest import mock

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials

PUBLISH_RESPONSE = (
    b'<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
    b"<PublishResult><MessageId>reference</MessageId></PublishResult>"
    b"<ResponseMetadata><RequestId>reference</RequestId></ResponseMetadata>"
    b"</PublishResponse>"
)


def text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def publish(args):
    captured = {}

    def before_send(request, **_):
        captured["url"] = request.url
        captured["headers"] = {k: text(v) for k, v in request.headers.items()}
        captured["body"] = text(request.body)
        response = AWSResponse(request.url, 200, {}, None)
        response._content = PUBLISH_RESPONSE  # answered here: nothing is sent
        return response

    session = botocore.session.Session()
    session.set_credentials(args["access_key"], args["secret_key"], args.get("token") or None)
    client = session.create_client("sns", region_name=args["region"],
                                   endpoint_url=args["endpoint_url"])
    client.meta.events.register("before-send.sns.Publish", before_send)
    when = datetime.datetime.strptime(args["timestamp"], "%Y%m%dT%H%M%SZ")
    with mock.patch("botocore.auth.datetime") as fake_datetime:
        fake_datetime.datetime.utcnow.return_value = when
        client.publish(TargetArn=args["target_arn"], Message=args["message"],
                       MessageStructure="json")
    return captured


def sign(args):
    request = AWSRequest(method=args["method"], url=args["url"],
                         headers=args.get("headers", {}), data=args.get("body", "").encode())
    request.context["timestamp"] = args["timestamp"]
    auth = SigV4Auth(Credentials(args["access_key"], args["secret_key"], args.get("token") or None),
                     args["service"], args["region"])
    # add_auth() without its clock: the same steps, at the given time.
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    string_to_sign = auth.string_to_sign(request, canonical)
    auth._inject_signature_to_request(request, auth.signature(string_to_sign, request))
    return {"authorization": request.headers["Authorization"], "canonical_request": canonical,
            "string_to_sign": string_to_sign,
            "headers": {k: text(v) for k, v in request.headers.items()}}


def main():
    modes = {"publish": publish, "sign": sign}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        sys.exit("usage: sigv4_reference.py publish|sign < request.json")
    json.dump(modes[sys.argv[1]](json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
