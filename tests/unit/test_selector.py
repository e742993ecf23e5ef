"""The guest selector: which guests a daemon manages ([daemon] guest_names …)."""

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtagent.config import parse_config
from rtagent.selector import GuestSelector
from tests.guests import domain_xml, rt_metadata

pytestmark = pytest.mark.unit


def test_default_selects_every_guest():
    sel = GuestSelector.from_config(parse_config({}, resolve=False).daemon)
    assert sel.selects_all
    assert sel.matches_name("anything")
    assert sel.matches("anything", None)


def test_globs_then_exclusions():
    cfg = parse_config({"daemon": {"guest_names": ["nodeA-*", "db?"],
                                   "guest_names_exclude": ["nodeA-test*"]}}, resolve=False)
    sel = GuestSelector.from_config(cfg.daemon)
    assert not sel.selects_all
    assert sel.matches_name("nodeA-vm1")
    assert sel.matches_name("db1")
    assert not sel.matches_name("db10")
    assert not sel.matches_name("nodeA-test1")
    assert not sel.matches_name("nodeB-vm1")
    # Case-sensitive, as libvirt domain names are.
    assert not sel.matches_name("NODEA-vm1")


def test_require_metadata_reads_the_rtagent_element():
    sel = GuestSelector(require_metadata=True)
    with_md = domain_xml("g1", metadata=rt_metadata())
    without = domain_xml("g2")
    assert sel.matches("g1", with_md)
    assert not sel.matches("g2", without)
    assert not sel.matches("g2", None)
    # An unparsable XML never selects a guest that had to opt in.
    assert not sel.matches("g3", "<domain><metadata>")
    # enabled='no' is still the element: selected, and its intent says "not realtime".
    assert sel.matches("g4", domain_xml("g4", metadata=rt_metadata(enabled="no")))


def test_config_round_trips_to_json():
    cfg = parse_config({"daemon": {"guest_names": ["a*"]}}, resolve=False)
    assert cfg.to_json()["daemon"]["guest_names"] == ("a*",)
    assert cfg.daemon.guest_names == ("a*",)


_GLOB = st.text(alphabet="ab*?[]!-.\\", max_size=6)
_NAME = st.text(alphabet="ab[]!-.\\*?\n", max_size=8)


@given(st.lists(_GLOB, max_size=3), st.lists(_GLOB, max_size=2), _NAME)
@settings(max_examples=400, deadline=None)
def test_compiled_globs_agree_with_fnmatchcase(names, exclude, name):
    sel = GuestSelector(names=tuple(names), exclude=tuple(exclude))
    want = any(fnmatch.fnmatchcase(name, g) for g in names) and not any(fnmatch.fnmatchcase(name, g)
                                                                        for g in exclude)
    assert sel.matches_name(name) is want


def test_no_name_globs_select_nothing():
    assert not GuestSelector(names=()).matches_name("vm1")
    assert not GuestSelector(names=()).matches_name("")


def test_a_libvirt_listing_builds_guests_only_for_selected_names():
    """libvirt's own test driver (in-process, no daemon): the listing asks
    the name first and skips what the selector does not take."""
    from rtagent.libvirt_host import LibvirtHost

    host = LibvirtHost("test:///default")
    host.connect()
    try:
        every = host.active_guests()
        assert [g.name for g in every.values()] == ["test"]
        assert host.active_guests(GuestSelector(names=("other-*",)).matches_name) == {}
        assert list(host.active_guests(GuestSelector(names=("te*",)).matches_name)) == list(every)
    finally:
        host.close()
