"""Integrations with third-party observability tools (optional extras): OpenTelemetry
(``conveyor[otel]``) and Sentry (``conveyor[sentry]``). The core never imports them."""
