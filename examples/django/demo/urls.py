from django.urls import path

from . import views as v

urlpatterns = [
    # ---- docs/events-and-functions.md, "The Django API": called by the job system
    # (Api-Key required, faults apply)
    path("api/serverless/pickups/<int:pickup_id>/", v.serverless_pickup),
    path("api/users/admins/", v.admins),
    path("api/users/<int:user_id>/tokens/", v.user_tokens),
    # <path:token>: an SNS endpoint ARN has "/" in it, and %2F arrives decoded in PATH_INFO
    path("api/users/<int:user_id>/tokens/<path:token>/", v.user_token_delete),
    path("api/workers/available/", v.workers_available),
    path("api/serverless/escrow/<int:pickup_id>/release/", v.escrow_release),
    path("api/analytics/pickups/", v.analytics_pickups),
    path("api/reports/", v.reports),
    path("api/cleanup/", v.cleanup),
    # ---- demo / test helpers (no key needed, no faults)
    path("api/demo/state/", v.demo_state),
    path("api/demo/faults/", v.demo_faults),
    path("api/demo/reset/", v.demo_reset),
    path("api/demo/seed/", v.demo_seed),
    path("api/demo/outbox/flush/", v.demo_outbox_flush),
    path("api/demo/pickups/", v.demo_pickups),
    path("api/demo/pickups/<int:pickup_id>/accept/", v.demo_accept),
    path("api/demo/pickups/<int:pickup_id>/deliver/", v.demo_deliver),
    path("api/demo/pickups/<int:pickup_id>/confirm/", v.demo_confirm),
    path("api/demo/pickups/<int:pickup_id>/dispute/", v.demo_dispute),
    path("api/demo/pickups/<int:pickup_id>/cancel/", v.demo_cancel),
    path("api/demo/workers/", v.demo_workers),
    path("api/demo/workers/<int:worker_id>/location/", v.demo_worker_location),
    path("api/demo/tokens/", v.demo_tokens),
    path("api/demo/admins/", v.demo_admins),
    path("api/demo/reports/", v.demo_reports),
]
