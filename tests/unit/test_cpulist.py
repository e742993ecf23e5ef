"""CPU list, hex mask and Nova realtime mask syntaxes (rtagent/cpulist.py).

Round trips are property-tested because the formatter's run-collapsing and the
hex mask's 32-bit grouping are exactly where off-by-one bugs hide.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtagent.cpulist import (
    MAX_CPU,
    CpuListError,
    format_cpulist,
    format_hexmask,
    parse_cpulist,
    parse_hexmask,
    parse_realtime_mask,
)

pytestmark = pytest.mark.unit

cpu_sets = st.frozensets(st.integers(min_value=0, max_value=MAX_CPU), max_size=64)
small_cpu_sets = st.frozensets(st.integers(min_value=0, max_value=40), max_size=41)


# -- kernel list syntax ------------------------------------------------------


@given(cpu_sets)
def test_cpulist_round_trip(cpus: frozenset[int]) -> None:
    assert parse_cpulist(format_cpulist(cpus), allow_empty=True) == cpus


@given(small_cpu_sets)
def test_format_is_canonical(cpus: frozenset[int]) -> None:
    text = format_cpulist(cpus)
    # Formatting the parsed text again changes nothing (canonical form).
    assert format_cpulist(parse_cpulist(text, allow_empty=True)) == text
    # No run of consecutive CPUs is left uncollapsed.
    for a, b in zip(sorted(cpus), sorted(cpus)[1:]):
        if b == a + 1:
            assert f",{b}," not in f",{text}," or f",{a}," not in f",{text},"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", {0}),
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        (" 2 , 4-5 \n", {2, 4, 5}),
        ("0-7:2/4", {0, 1, 4, 5}),
        ("3-3", {3}),
    ],
)
def test_parse_cpulist_examples(text: str, expected: set[int]) -> None:
    assert parse_cpulist(text) == expected


def test_format_cpulist_examples() -> None:
    assert format_cpulist([5, 0, 1, 3, 6, 7]) == "0-1,3,5-7"
    assert format_cpulist([]) == ""


@pytest.mark.parametrize(
    "text, token, reason",
    [
        ("", "", "empty CPU list"),
        ("1,,2", "", "empty item"),
        ("a-b", "a-b", "expected a CPU number"),
        ("0,3-1", "3-1", "range end below its start"),
        ("-1", "-1", "expected a CPU number"),
        ("0-99999", "0-99999", f"CPU number above {MAX_CPU}"),
        ("0-3:4", "0-3:4", "stride must be 'used/group'"),
        ("5:1/2", "5:1/2", "stride needs a range"),
        ("0-3:3/2", "0-3:3/2", "invalid stride"),
        ("٣", "٣", "expected a CPU number"),
    ],
)
def test_parse_cpulist_errors_name_the_token(text: str, token: str, reason: str) -> None:
    with pytest.raises(CpuListError) as exc:
        parse_cpulist(text)
    assert exc.value.token == token
    assert exc.value.reason == reason
    assert repr(token) in str(exc.value)


def test_empty_list_allowed_when_asked() -> None:
    assert parse_cpulist(" \n", allow_empty=True) == frozenset()


@given(st.text(alphabet="0123456789-,:/ ^ax", max_size=12))
def test_parser_only_raises_cpulisterror_naming_part_of_input(text: str) -> None:
    try:
        parse_cpulist(text)
    except CpuListError as err:
        assert err.text == text
        assert err.token.strip() in text


# -- hex masks ---------------------------------------------------------------


@given(cpu_sets)
def test_hexmask_round_trip(cpus: frozenset[int]) -> None:
    assert parse_hexmask(format_hexmask(cpus)) == cpus


@given(cpu_sets)
def test_hexmask_groups_are_32_bit(cpus: frozenset[int]) -> None:
    groups = format_hexmask(cpus).split(",")
    assert all(len(g) == 8 for g in groups)
    assert groups[0] != "00000000" or len(groups) == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ff", set(range(8))),
        ("0x3", {0, 1}),
        ("00000001,00000000", {32}),
        ("00000000", set()),
        ("8000,00000001\n", {0, 47}),
    ],
)
def test_parse_hexmask_examples(text: str, expected: set[int]) -> None:
    assert parse_hexmask(text) == expected


@pytest.mark.parametrize(
    "text, token",
    [("0x", "0x"), ("ff,", ""), ("100000000", "100000000"), ("fg", "fg"), (",ff", "")],
)
def test_parse_hexmask_errors_name_the_group(text: str, token: str) -> None:
    with pytest.raises(CpuListError) as exc:
        parse_hexmask(text)
    assert exc.value.token == token


def test_parse_hexmask_rejects_empty_and_huge() -> None:
    with pytest.raises(CpuListError):
        parse_hexmask("  ")
    with pytest.raises(CpuListError, match="CPU number above"):
        parse_hexmask("1" + ",00000000" * (MAX_CPU // 32 + 1))


def test_format_hexmask_rejects_out_of_range() -> None:
    with pytest.raises(CpuListError):
        format_hexmask([MAX_CPU + 1])


# -- Nova's hw:cpu_realtime_mask ---------------------------------------------


@pytest.mark.parametrize(
    "mask, nvcpus, expected",
    [
        ("^0-1", 4, {2, 3}),
        ("^0", 2, {1}),
        ("2-7", 8, {2, 3, 4, 5, 6, 7}),
        ("0-3,^2", 4, {0, 1, 3}),
        ("0-3,^2", 8, {0, 1, 3}),
        ("^0,^3", 4, {1, 2}),
        (" 1 ", 2, {1}),
        ("^0-3", 4, set()),  # syntactically fine; validation rejects "no realtime vCPU"
    ],
)
def test_realtime_mask_nova_semantics(mask: str, nvcpus: int, expected: set[int]) -> None:
    assert parse_realtime_mask(mask, range(nvcpus)) == expected


@pytest.mark.parametrize(
    "mask, token, reason_part",
    [
        ("^", "^", "'^' without a vCPU"),
        ("0,^,1", "^", "'^' without a vCPU"),
        ("a-b", "a-b", "expected a CPU number"),
        ("^a-b", "^a-b", "expected a CPU number"),
        ("3-1", "3-1", "range end below its start"),
        ("0-7", "0-7", "vCPU 4-7 not in the guest's vCPUs 0-3"),
        ("^5-6", "^5-6", "excluded vCPU 5-6 not in the guest's vCPUs 0-3"),
        ("", "", "empty realtime mask"),
        ("1,,2", "", "empty item"),
    ],
)
def test_realtime_mask_errors_name_the_token(mask: str, token: str, reason_part: str) -> None:
    with pytest.raises(CpuListError) as exc:
        parse_realtime_mask(mask, range(4))
    assert exc.value.token == token
    assert reason_part in exc.value.reason


@given(
    st.integers(min_value=1, max_value=16).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.frozensets(st.integers(0, n - 1)),
            st.frozensets(st.integers(0, n - 1)),
        )
    )
)
def test_realtime_mask_set_algebra(case: tuple[int, frozenset[int], frozenset[int]]) -> None:
    """include-list minus exclusions; no include-list = every vCPU minus exclusions."""
    n, inc, exc = case
    parts = [format_cpulist([c]) for c in sorted(inc)] + [f"^{c}" for c in sorted(exc)]
    if not parts:
        return
    base = inc if inc else frozenset(range(n))
    assert parse_realtime_mask(",".join(parts), range(n)) == base - exc


@given(st.text(alphabet="0123456789-,^ x", max_size=10))
def test_realtime_mask_errors_name_a_token_of_the_input(mask: str) -> None:
    try:
        parse_realtime_mask(mask, range(4))
    except CpuListError as err:
        assert err.token.strip() in mask


def test_equal_cpu_sets_are_one_object():
    """Thousands of per-thread records hold a few distinct sets (RSS)."""
    from rtagent.cpulist import interned

    a, b = parse_cpulist("0-1"), parse_cpulist("1,0")
    assert a == {0, 1} and a is b and interned([1, 0]) is a
    assert interned(set()) == frozenset()
