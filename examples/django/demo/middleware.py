"""API key check, fault injection and request logging for the routes the job system
calls (docs/events-and-functions.md, "The Django API").

Routes under /api/ except /api/demo/ are the Django API ("contract routes" in
the code): they require
`Authorization: Api-Key <DJANGO_API_KEY>` and are subject to injected faults.
"""
import hmac
import json
import logging
import re
import time

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone

from . import faults
from .models import EscrowCall
from .util import WRITE_LOCK, json_response

log = logging.getLogger("demo")
ESCROW_RE = re.compile(r"^/api/serverless/escrow/(\d+)/release/$")


def is_contract_route(path):
    return path.startswith("/api/") and not path.startswith("/api/demo/")


def check_api_key(request):
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "api-key" or not key:
        return False
    return hmac.compare_digest(key.strip().encode(), settings.DJANGO_API_KEY.encode())


class ApiMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = request.path
        if not is_contract_route(path):
            return self.get_response(request)
        received = timezone.now()
        fault = faults.take(path)
        fault_mode = fault["mode"] if fault else None
        response = None
        if fault_mode == "slow":
            time.sleep(fault["delay_ms"] / 1000.0)
        elif fault_mode == "down":
            response = json_response({"error": "unavailable", "message": "Injected fault: service down."},
                                     status=503)
            if fault.get("retry_after") is not None:
                response["Retry-After"] = str(fault["retry_after"])
        elif fault_mode == "429":
            response = json_response({"error": "rate_limited", "message": "Injected fault: too many requests."},
                                     status=429)
            response["Retry-After"] = str(fault["retry_after"] if fault["retry_after"] is not None else 1)
        elif fault_mode == "garbage":
            response = HttpResponse(b"<html><body>502 upstream garbage {not json", status=200,
                                    content_type="text/html")
        if response is None:
            if not check_api_key(request):
                response = json_response(
                    {"error": "unauthorized",
                     "message": "Send the header 'Authorization: Api-Key <DJANGO_API_KEY>'."}, status=401)
            else:
                response = self.get_response(request)
        idem = request.META.get("HTTP_IDEMPOTENCY_KEY")
        faults.log_request(request.method, path, response.status_code, fault_mode, received, idem)
        m = ESCROW_RE.match(path)
        if m:
            self._log_escrow(request, int(m.group(1)), response, fault_mode, received, idem)
        return response

    @staticmethod
    def _log_escrow(request, pickup_id, response, fault_mode, received, idem):
        reason = None
        try:
            body = json.loads(request.body.decode("utf-8")) if request.body else {}
            if isinstance(body, dict) and isinstance(body.get("reason"), str):
                reason = body["reason"][:64]
        except Exception:
            pass
        status = None
        if response.get("Content-Type", "").startswith("application/json") and response.status_code != 204:
            try:
                status = json.loads(response.content).get("status")
            except Exception:
                status = None
        try:
            with WRITE_LOCK:
                EscrowCall.objects.create(pickup_id=pickup_id, idempotency_key=idem, reason=reason,
                                          status_code=response.status_code, status=status, fault=fault_mode,
                                          received_at=received, answered_at=timezone.now())
        except Exception:  # never let the audit log break the answer
            log.exception("could not record the escrow call")
