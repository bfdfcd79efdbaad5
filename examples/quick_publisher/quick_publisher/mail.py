"""What the site's tasks retry on when sending mail."""

from smtplib import SMTPException

#: Sending mail failed in a way that may pass: the server refused, hung up, or was unreachable
#: (OSError covers refused connections and timeouts). Mail tasks retry on these, with
#: exponential backoff and jitter; other errors (a bug) fail at once.
MAIL_ERRORS: tuple[type[BaseException], ...] = (SMTPException, OSError)
