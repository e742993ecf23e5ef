"""Error types an operator sees.  Each carries a one-line message that names
what is at fault (a config key and value, a domain and rule, a capability), so
the CLI can print ``str(err)`` and exit without a traceback."""

from __future__ import annotations


class RtagentError(Exception):
    """Base of every error rtagent reports to its user."""

    exit_code = 2


class ConfigError(RtagentError):
    """The configuration file is unreadable or a key has a bad value."""

    def __init__(self, key: str, value: object, reason: str, *, path: str | None = None):
        self.key = key
        self.value = value
        self.reason = reason
        self.path = path
        where = f"{path}: " if path else ""
        shown = "" if value is _MISSING else f" = {value!r}"
        super().__init__(f"config error: {where}{key}{shown}: {reason}")


class DomainXMLError(RtagentError):
    """A domain XML that cannot be parsed (malformed, or with forbidden entities)."""


class CapabilityError(RtagentError):
    """A privilege or kernel feature rtagent needs is missing."""


class _Missing:
    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "<missing>"


_MISSING = _Missing()
MISSING = _MISSING


class LibvirtError(RtagentError):
    """libvirt refused or failed a call (translated at the libvirt boundary,
    ``libvirt_host``, so nothing above it sees ``libvirt.libvirtError``)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class GuestGone(LibvirtError):
    """The domain stopped or vanished: normal during churn, not a failure."""


class LibvirtUnavailable(LibvirtError):
    """libvirt cannot be reached (daemon down, bad URI, no permission)."""


class LibvirtUnresponsive(LibvirtUnavailable):
    """A libvirt call did not return within its timeout (libvirtd hung)."""
