"""Settings of the Klynaa Jobs reference Django app (demo / test double).

Environment:
  DJANGO_API_KEY         key expected in "Authorization: Api-Key <key>" (default "dev-key")
  KLYNAA_INGRESS         ingress endpoint(s), comma-separated (default tcp://127.0.0.1:5555)
  KLYNAA_INGRESS_TIMEOUT_S  per-attempt reply timeout of the client (default 5)
  KLYNAA_INGRESS_RETRIES    resends after a timeout (default 1)
  KLYNAA_INGRESS_RETRY_BUSY "0": no client-side retry of overloaded / shutting_down (default 1)
  KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE  CURVE: the broker's public key file (default: no CURVE)
  KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE  CURVE: this site's key pair file (klynaa keygen)
  KLYNAA_DEMO_DB         directory of the SQLite file db.sqlite3 (default: this folder)
  KLYNAA_DEMO_PAGE_SIZE  page size of GET /api/analytics/pickups/ (default 100)
  KLYNAA_DEMO_DEBUG      "1" for Django DEBUG
"""
import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BASE_DIR.parent.parent

# The Python ingress client lives in clients/python/ of this repository.
_CLIENT_DIR = str(REPO_ROOT / "clients" / "python")
if _CLIENT_DIR not in sys.path:
    sys.path.insert(0, _CLIENT_DIR)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "klynaa-demo-not-secret")
DEBUG = os.environ.get("KLYNAA_DEMO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

DJANGO_API_KEY = os.environ.get("DJANGO_API_KEY", "dev-key")
KLYNAA_INGRESS = os.environ.get("KLYNAA_INGRESS", "tcp://127.0.0.1:5555")
KLYNAA_INGRESS_TIMEOUT_S = float(os.environ.get("KLYNAA_INGRESS_TIMEOUT_S", "5"))
KLYNAA_INGRESS_RETRIES = int(os.environ.get("KLYNAA_INGRESS_RETRIES", "1"))
KLYNAA_INGRESS_RETRY_BUSY = os.environ.get("KLYNAA_INGRESS_RETRY_BUSY", "1") != "0"
KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE = os.environ.get("KLYNAA_INGRESS_CURVE_SERVER_PUBLIC_FILE") or None
KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE = os.environ.get("KLYNAA_INGRESS_CURVE_CLIENT_SECRET_FILE") or None
# These six configure klynaa_client.django_client(), used by demo/services.py.
KLYNAA_DEMO_PAGE_SIZE = max(1, int(os.environ.get("KLYNAA_DEMO_PAGE_SIZE", "100")))

_db_dir = os.environ.get("KLYNAA_DEMO_DB")
if _db_dir:
    _db_path = Path(_db_dir)
    if _db_path.suffix in (".sqlite3", ".sqlite", ".db"):
        _db_path.parent.mkdir(parents=True, exist_ok=True)
        DB_FILE = _db_path
    else:
        _db_path.mkdir(parents=True, exist_ok=True)
        DB_FILE = _db_path / "db.sqlite3"
else:
    DB_FILE = BASE_DIR / "db.sqlite3"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DB_FILE),
        "OPTIONS": {"timeout": 30},
    }
}

INSTALLED_APPS = [
    "demo",
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",  # outermost: sets Content-Length (keep-alive)
    "demo.middleware.ApiMiddleware",
]

ROOT_URLCONF = "klynaa_site.urls"
WSGI_APPLICATION = "klynaa_site.wsgi.application"
APPEND_SLASH = False
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATA_UPLOAD_MAX_MEMORY_SIZE = 16 * 1024 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.server": {"handlers": ["console"], "level": os.environ.get("KLYNAA_DEMO_ACCESS_LOG", "INFO"),
                          "propagate": False},
        "demo": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
