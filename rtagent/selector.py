"""Which guests this daemon manages.

An operator rolling rtagent out to part of a node (or running several
daemons side by side, as the fleet tests do) names the guests it may touch.
A guest outside the selection is neither tuned nor reported: the daemon
behaves as if it did not exist, so two daemons with disjoint selections
never fight over a thread.
"""

from __future__ import annotations

import fnmatch
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .intent import RT_NS, parse_domain_xml
from .errors import DomainXMLError


@dataclass(frozen=True)
class GuestSelector:
    names: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    require_metadata: bool = False

    @classmethod
    def from_config(cls, daemon) -> "GuestSelector":
        """From a :class:`~rtagent.config.DaemonConfig`."""
        return cls(names=tuple(daemon.guest_names), exclude=tuple(daemon.guest_names_exclude),
                   require_metadata=daemon.guest_require_metadata)

    @property
    def selects_all(self) -> bool:
        return self.names == ("*",) and not self.exclude and not self.require_metadata

    def matches_name(self, name: str) -> bool:
        """The name part of the selection (no XML needed: cheap, checked first)."""
        if not any(fnmatch.fnmatchcase(name, g) for g in self.names):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)

    def matches(self, name: str, xml: str | bytes | ET.Element | None) -> bool:
        """Name and, when required, rtagent's metadata element in ``xml``.

        An XML that cannot be parsed does not select the guest when the
        metadata element is required: rtagent cannot know it was asked for.
        """
        if not self.matches_name(name):
            return False
        if not self.require_metadata:
            return True
        if xml is None:
            return False
        if isinstance(xml, ET.Element):
            root = xml
        else:
            try:
                root = parse_domain_xml(xml)
            except DomainXMLError:
                return False
        return root.find(f"metadata/{{{RT_NS}}}realtime") is not None
