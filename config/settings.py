"""Kilowatt settings, read from the environment (12-factor).

With no environment at all the product runs embedded: SQLite in ``var/`` and a
filesystem Celery broker in ``var/broker`` that a real worker process consumes.
``DATABASE_URL`` and ``REDIS_URL`` switch to PostgreSQL and Redis.
"""

import hashlib
import hmac
from pathlib import Path

import environ
import structlog
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("KILOWATT_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()
env_file = BASE_DIR / ".env"
if env_file.exists():
    environ.Env.read_env(str(env_file))

DEBUG = env.bool("DJANGO_DEBUG", default=False)


def _dev_secret_key() -> str:
    """A per-installation random key kept in var/, so that no secret lives in the repo."""
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        from django.core.management.utils import get_random_secret_key

        key_file.write_text(get_random_secret_key())
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or _dev_secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "crispy_forms",
    "crispy_bootstrap5",
    "treebeard",
    "pgtrigger",
    "pghistory",
    "pghistory.admin",
    "django_structlog",
    "axes",
    "import_export",
    "core",
    "customers",
    "metering",
    "billing",
    "payments",
    "inspection",
    "marketing",
    "portal",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # django-structlog's RequestMiddleware, without building its request events when their
    # level is off (core.middleware.RequestLogMiddleware; issue 5).
    "core.middleware.RequestLogMiddleware",
    "core.middleware.RequestIdHeaderMiddleware",
    "core.middleware.AuditContextMiddleware",
    "core.middleware.ApplicationErrorMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.staff",
                "portal.context_processors.portal",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'kilowatt.sqlite3'}")}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web app, the worker and beat share the embedded database.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, with the health check skipped for a connection that served a
        # request without error in the last DATABASE_HEALTH_CHECK_INTERVAL seconds.
        DATABASES["default"]["ENGINE"] = "core.db.postgresql"
DATABASE_HEALTH_CHECK_INTERVAL = env.float("DATABASE_HEALTH_CHECK_INTERVAL", default=5.0)
DATABASE_IS_POSTGRES = DATABASES["default"]["ENGINE"] in (
    "django.db.backends.postgresql",
    "core.db.postgresql",
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, Celery -------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
else:
    # Shared between processes (web, worker, beat), unlike locmem.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }
    broker_dir = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(broker_dir / "queue"),
        "data_folder_out": str(broker_dir / "queue"),
        "processed_folder": str(broker_dir / "processed"),
        "control_folder": str(broker_dir / "control"),
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND = f"file://{VAR_DIR / 'results'}"
    (VAR_DIR / "results").mkdir(parents=True, exist_ok=True)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = "Asia/Shanghai"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Metering / head-end ---------------------------------------------------------------
# Where the head-end reaches meters that have no terminal (concentrator) of their own.
METERING_DEFAULT_ENDPOINT = env.str("METERING_DEFAULT_ENDPOINT", default="127.0.0.1:9645")
METERING_READ_CONCURRENCY = env.int("METERING_READ_CONCURRENCY", default=200)
METERING_READ_TIMEOUT = env.float("METERING_READ_TIMEOUT", default=2.0)
# 0 = the production schedule (01:05, then retries of the gaps at 03, 07, 13, 19 h).
METERING_COLLECTION_INTERVAL_MINUTES = env.int("METERING_COLLECTION_INTERVAL_MINUTES", default=0)
# Remote commands (metering.services.commands): the timeout of each exchange with a meter;
# the waits after failed attempts 1, 2, 3... (the last one repeats); and how long a
# dispatcher's claim on a command lasts: it must outlast read-back + send + read-back, or
# another dispatcher could read back while a frame is still on its way.
METERING_COMMAND_TIMEOUT = env.float("METERING_COMMAND_TIMEOUT", default=3.0)
METERING_COMMAND_BACKOFF_SECONDS = env.list(
    "METERING_COMMAND_BACKOFF_SECONDS", cast=int, default=[10, 30, 90, 270, 600]
)
METERING_COMMAND_LEASE_SECONDS = env.float(
    "METERING_COMMAND_LEASE_SECONDS", default=4 * METERING_COMMAND_TIMEOUT + 10
)

# --- Notifications (core.services.notifications) ---------------------------------------
# One sender class per channel (dotted path; see core.notifications.Sender). A real SMS
# gateway is configured by naming its class here through the environment.
NOTIFICATION_SENDERS = {
    "sms": env.str("NOTIFICATION_SMS_SENDER", default="core.notifications.ConsoleSmsSender"),
    "email": env.str("NOTIFICATION_EMAIL_SENDER", default="core.notifications.DjangoEmailSender"),
    "portal": env.str("NOTIFICATION_PORTAL_SENDER", default="core.notifications.PortalSender"),
}
# Django's own default is SMTP on localhost:25; without a mail server every e-mail would
# fail, so e-mail goes to the console unless the environment names a real backend.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")

# --- Online payment gateways (payments.gateways) ---------------------------------------
# Adapters by name (see payments/gateways/base.py). The simulated gateway ("sim") pays
# without money, for the demo and tests: production sets PAYMENT_SIM_GATEWAY=false and names
# real adapters in PAYMENT_GATEWAYS_EXTRA ("alipay=payments.gateways.alipay.AlipayGateway").
PAYMENT_SIM_GATEWAY = env.bool("PAYMENT_SIM_GATEWAY", default=True)
PAYMENT_GATEWAYS = {"sim": "payments.gateways.simulated.SimulatedGateway"} if PAYMENT_SIM_GATEWAY else {}
PAYMENT_GATEWAYS.update(env.dict("PAYMENT_GATEWAYS_EXTRA", default={}))
# The simulated gateway's signing key; by default a key derived from SECRET_KEY (none in the repo).
PAYMENT_SIM_SECRET = (
    env.str("PAYMENT_SIM_SECRET", default="")
    or hmac.new(SECRET_KEY.encode(), b"kilowatt.payments.sim-gateway.v1", hashlib.sha256).hexdigest()
)
# The gateway the customer portal pays through ("sim" only while the simulated gateway is on).
PORTAL_PAYMENT_GATEWAY = env.str("PORTAL_PAYMENT_GATEWAY", default="sim")
# Key of the recharge-voucher PIN hashes; empty: derived from SECRET_KEY (payments/services/vouchers.py).
VOUCHER_PIN_KEY = env.str("VOUCHER_PIN_KEY", default="")

# --- Auth -----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "customers:search"
LOGOUT_REDIRECT_URL = "login"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Sign-in lockout (django-axes): this many failures for one user name, or from one address,
# locks it for the
# cool-off period; a success resets the count.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("LOGIN_LOCKOUT_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "core/locked_out.html"
AXES_VERBOSE = False

# Portal one-time codes (sign-up, password reset, account binding; portal/services/auth.py):
# lifetime, wrong entries before a code dies, minimum gap between codes and codes per hour for
# one phone and one client address, and the lock of a phone after repeated wrong codes.
PORTAL_CODE_TTL_SECONDS = env.int("PORTAL_CODE_TTL_SECONDS", default=600)
PORTAL_CODE_MAX_ATTEMPTS = env.int("PORTAL_CODE_MAX_ATTEMPTS", default=5)
PORTAL_CODE_RESEND_SECONDS = env.int("PORTAL_CODE_RESEND_SECONDS", default=60)
PORTAL_CODE_MAX_PER_PHONE_PER_HOUR = env.int("PORTAL_CODE_MAX_PER_PHONE_PER_HOUR", default=5)
PORTAL_CODE_MAX_PER_IP_PER_HOUR = env.int("PORTAL_CODE_MAX_PER_IP_PER_HOUR", default=20)
PORTAL_CODE_FAILURE_LIMIT = env.int("PORTAL_CODE_FAILURE_LIMIT", default=5)
PORTAL_CODE_LOCKOUT_SECONDS = env.int("PORTAL_CODE_LOCKOUT_SECONDS", default=900)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- I18n -----------------------------------------------------------------------------
LANGUAGE_CODE = "zh-hans"
LANGUAGES = [("zh-hans", _("Simplified Chinese")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "Asia/Shanghai"
USE_I18N = True
USE_TZ = True

# --- Static ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

CRISPY_ALLOWED_TEMPLATE_PACKS = "bootstrap5"
CRISPY_TEMPLATE_PACK = "bootstrap5"

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["core.api.IsStaffMember"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"anon": "60/min", "user": "1200/min"},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Kilowatt API",
    "DESCRIPTION": "Marketing & billing platform for electric utilities",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
}

# --- Audit ----------------------------------------------------------------------------
PGHISTORY_APPEND_ONLY = True  # event rows get UPDATE/DELETE protection triggers

# A keyed digest of identity documents lets the portal match "last digits" checks
# without the system storing the full number.
IDENTITY_DIGEST_KEY = env.str("IDENTITY_DIGEST_KEY", default="") or SECRET_KEY

# --- Logging --------------------------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="console")  # console | json
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {
            "()": structlog.stdlib.ProcessorFormatter,
            "processor": (
                structlog.processors.JSONRenderer(ensure_ascii=False)
                if LOG_FORMAT == "json"
                else structlog.dev.ConsoleRenderer(colors=False)
            ),
            "foreign_pre_chain": [
                structlog.contextvars.merge_contextvars,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
            ],
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "faker": {"level": "WARNING"},
    },
}
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.filter_by_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    cache_logger_on_first_use=True,
)
DJANGO_STRUCTLOG_CELERY_ENABLED = True
