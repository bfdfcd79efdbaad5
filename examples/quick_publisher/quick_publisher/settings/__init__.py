"""Settings: ``base`` (shared), ``production`` (SMTP, secrets from the environment),
``demo`` (outbox instead of SMTP, report every ten minutes) and ``e2e`` (browser tests)."""
