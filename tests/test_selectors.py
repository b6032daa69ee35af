"""Label selectors as Kubernetes parses and matches them, and heartbeat staleness: pure tables.

The selector cases come from Kubernetes' own tables (apimachinery
`labels/selector_test.go`: TestSelectorParse, TestSetSelectorParser,
TestSelectorMatches, TestRequirementSelectorMatching, TestLexer; `validate/content`
kube_test.go for keys and values) and from the label documentation: `!=` and
`notin` also match a set without the key. The error texts are kubectl's
(v1.30 wording), checked against messages kubectl printed for real input.
"""

from __future__ import annotations

import pytest

from agent.heartbeat import jittered
from harmony_core.selectors import (
    Requirement,
    Selector,
    device_status,
    match_labels,
    parse_selector,
)


@pytest.mark.parametrize(
    ("age", "interval", "state", "want"),
    [
        (0, 15, "running", "Ready"),
        (60, 15, "running", "Ready"),
        (60.1, 15, "running", "Stale"),
        (300, 15, "running", "Stale"),
        (300.1, 15, "running", "Offline"),
        (4, 1, "running", "Ready"),
        (5, 1, "running", "Stale"),
        (300, 1, "running", "Stale"),
        (301, 1, "running", "Offline"),
        (1200, 60, "running", "Stale"),
        (1201, 60, "running", "Offline"),
        (1, 15, "stopping", "Stopped"),
        (None, None, None, "Unknown"),
    ],
)
def test_device_status(
    age: float | None, interval: float | None, state: str | None, want: str
) -> None:
    assert device_status(age, interval, state) == want


# Valid selectors and Kubernetes' canonical form of each (sorted by key, values sorted).
VALID = [
    ("x=a,y=b,z=c", "x=a,y=b,z=c"),
    ("", ""),
    ("x!=a,y=b", "x!=a,y=b"),
    ("x=", "x="),
    ("x= ", "x="),
    ("x=,z= ", "x=,z="),
    ("x= ,z= ", "x=,z="),
    ("!x", "!x"),
    ("x>1", "x>1"),
    ("x>1,z<5", "x>1,z<5"),
    ("x==a", "x==a"),
    ("\rx", "x"),
    ("this-is-a-dns.domain.com/key-with-dash", "this-is-a-dns.domain.com/key-with-dash"),
    ("this-is-another-dns.domain.com/key-with-dash in (so,what)",
     "this-is-another-dns.domain.com/key-with-dash in (so,what)"),
    ("0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
     "0.1.2.domain/99 notin (10.10.100.1,tick.tack.clock)"),
    ("foo  in\t (abc)", "foo in (abc)"),
    ("x notin\n (abc)", "x notin (abc)"),
    ("x  notin\t\t\t(abc,def)", "x notin (abc,def)"),
    ("x in (abc,def)", "x in (abc,def)"),
    ("x in (abc,)", "x in (,abc)"),
    ("x in ()", "x in ()"),
    ("x notin (abc,,def),bar,z in (),w", "bar,w,x notin (,abc,def),z in ()"),
    ("x,y in (a)", "x,y in (a)"),
    ("x notin ( )", "x notin ()"),
    ("x notin (, a)", "x notin (,a)"),
    ("a ", "a"),
    ("a in (x,y,notin, z,in)", "a in (in,notin,x,y,z)"),
    ("notin=in", "notin=in"),
    ("in in (in)", "in in (in)"),
    ("site=berlin, example.com/role=gw", "example.com/role=gw,site=berlin"),
    ("Uppercase_Is_OK_123=1-starts-with-num", "Uppercase_Is_OK_123=1-starts-with-num"),
    ("a" * 63, "a" * 63),
    ("a" * 253 + "/" + "b" * 63, "a" * 253 + "/" + "b" * 63),
    ("k=" + "v" * 63, "k=" + "v" * 63),
]  # fmt: skip


@pytest.mark.parametrize(("text", "canonical"), VALID)
def test_valid_selectors_parse_to_kubernetes_canonical_form(text: str, canonical: str) -> None:
    assert str(parse_selector(text)) == canonical


def test_requirements_are_what_kubernetes_builds() -> None:
    assert parse_selector("x notin (abc,def),bar,z in (),w") == Selector(
        (
            Requirement("bar", "exists"),
            Requirement("w", "exists"),
            Requirement("x", "notin", ("abc", "def")),
            Requirement("z", "in", ("",)),
        )
    )
    assert parse_selector("!x,y>3") == Selector(
        (Requirement("x", "!"), Requirement("y", "gt", ("3",)))
    )


_NAME_RULE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_VALUE_RULE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_OPS = "in, notin, =, ==, !=, gt, lt"

INVALID = [
    # Kubernetes' own bad strings, with the message its parser gives.
    ("x=a||y=b",
     f'unable to parse requirement: values[0][x]: Invalid value: "a||y": {_VALUE_RULE}'),
    ("x==a==b", "found '==', expected: ',' or 'end of string'"),
    ("!x=a", "found '=', expected: ',' or 'end of string'"),
    ("x<a", "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' "
            "operators, the value must be an integer"),
    ("x,,y", "found ',', expected: identifier after ','"),
    (",x,y", "found ',', expected: !, identifier, or 'end of string'"),
    ("x nott in (y)", f"unable to parse requirement: found 'nott', expected: {_OPS}"),
    ("a in (xyz),", "found '', expected: identifier after ','"),
    ("a in (xyz)b notin ()", "found 'b', expected: ',' or 'end of string'"),
    ("a in (xyz abc)", "unable to parse requirement: found 'abc', expected: ',' or ')'"),
    ("a notin(", "unable to parse requirement: found '', expected: ',', ')' or identifier"),
    ("a (", f"unable to parse requirement: found '(', expected: {_OPS}"),
    ("(", "found '(', expected: !, identifier, or 'end of string'"),
    ("x in (a,,)", "unable to parse requirement: found ')', expected: ',', or identifier"),
    ("x in", "unable to parse requirement: found '' expected: '('"),
    ("x=(", "unable to parse requirement: found '(', expected: identifier"),
    ("x!", f"unable to parse requirement: found '!', expected: {_OPS}"),
    ("!", "unable to parse requirement: found '', expected: identifier"),
    # As kubectl printed them for these inputs.
    ("app:monolith",
     f'unable to parse requirement: <nil>: Invalid value: "app:monolith": {_NAME_RULE}'),
    ("*bar", f'unable to parse requirement: <nil>: Invalid value: "*bar": {_NAME_RULE}'),
    ("app.kubernetes_io/name=x",
     'unable to parse requirement: <nil>: Invalid value: "app.kubernetes_io/name": prefix part a '
     "lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
     "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
     r"validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
    ("a/b/c=d",
     'unable to parse requirement: <nil>: Invalid value: "a/b/c": a qualified name must consist '
     "of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
     "character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
     "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' "
     "(e.g. 'example.com/MyName')"),
    ("good-key=" + "z" * 64,
     f'unable to parse requirement: values[0][good-key]: Invalid value: "{"z" * 64}": must be no '
     "more than 63 characters"),
    ("example.com/=x",
     'unable to parse requirement: <nil>: Invalid value: "example.com/": name part must be '
     f"non-empty; {_NAME_RULE}"),
    ("/simple", 'unable to parse requirement: <nil>: Invalid value: "/simple": prefix part must '
                "be non-empty"),
    ("a" * 64, f'unable to parse requirement: <nil>: Invalid value: "{"a" * 64}": name part must '
               "be no more than 63 characters"),
    ("x>a$", "unable to parse requirement: [values[0]: Invalid value: \"a$\": for 'Gt', 'Lt' "
             f'operators, the value must be an integer, values[0][x]: Invalid value: "a$": '
             f"{_VALUE_RULE}]"),
    ("k=a\x0bb",
     f'unable to parse requirement: values[0][k]: Invalid value: "a\\vb": {_VALUE_RULE}'),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_selectors_fail_with_kubectls_message(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_selector(text)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "key",
    ["nospecialchars%^=@", "cantendwithadash-", "-cantstartwithadash-", "only/one/slash",
     "Example.com/abc", "example_com/abc", "example.com/", "/simple", "a" * 64,
     "a" * 254 + "/abc"],
)  # fmt: skip
def test_keys_kubernetes_refuses_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="unable to parse requirement"):
        parse_selector(f"!{key}")


@pytest.mark.parametrize(
    "value",
    ["nospecialchars%^=@", "Tama-nui-te-rā.is.Māori.sun", "\\backslashes\\are\\bad",
     "-starts-with-dash", "ends-with-dash-", ".starts.with.dot", "ends.with.dot.", "a" * 64],
)  # fmt: skip
def test_values_kubernetes_refuses_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"unable to parse requirement: "):
        parse_selector(f"k in ({value})")


MATCHES = [
    # TestSelectorMatches
    ("", {"x": "y"}, True),
    ("x=y", {"x": "y"}, True),
    ("x=y,z=w", {"x": "y", "z": "w"}, True),
    ("x!=y,z!=w", {"x": "z", "z": "a"}, True),
    ("notin=in", {"notin": "in"}, True),
    ("x", {"x": "z"}, True),
    ("!x", {"y": "z"}, True),
    ("x>1", {"x": "2"}, True),
    ("x<1", {"x": "0"}, True),
    ("x=z", {}, False),
    ("x=y", {"x": "z"}, False),
    ("x=y,z=w", {"x": "w", "z": "w"}, False),
    ("x!=y,z!=w", {"x": "z", "z": "w"}, False),
    ("x", {"y": "z"}, False),
    ("!x", {"x": "z"}, False),
    ("x>1", {"x": "0"}, False),
    ("x<1", {"x": "2"}, False),
    ("foo=bar", {"foo": "bar", "baz": "blah"}, True),
    ("baz=blah", {"foo": "bar", "baz": "blah"}, True),
    ("foo=bar,baz=blah", {"foo": "bar", "baz": "blah"}, True),
    ("foo=blah", {"foo": "bar", "baz": "blah"}, False),
    ("baz=bar", {"foo": "bar", "baz": "blah"}, False),
    ("foo=bar,foobar=bar,baz=blah", {"foo": "bar", "baz": "blah"}, False),
    # TestRequirementSelectorMatching
    ("x in (foo),y notin (alpha)", {"x": "foo", "y": "baz"}, True),
    ("x in (foo),y in (alpha)", {"x": "foo", "y": "baz"}, False),
    ("x notin (),y", {"y": ""}, True),
    ("!x,y", {"y": ""}, True),
    ("x notin (),!y", {"y": ""}, False),
    ("x in ()", {"y": "baz"}, False),
    ("z>1", {"z": "2"}, True),
    ("z>1", {"z": "v2"}, False),
    # The documentation: != and notin also match a set without the key.
    ("tier!=frontend", {}, True),
    ("environment notin (frontend,backend)", {"app": "x"}, True),
    ("environment in (production,qa)", {"environment": "qa"}, True),
    ("environment in (production,qa)", {}, False),
    ("partition,environment notin (qa)", {"partition": "", "environment": "prod"}, True),
    ("x>9223372036854775807", {"x": "9223372036854775808"}, False),  # not an int64
    ("x<5", {"x": "+3"}, True),  # a label is read as Go's ParseInt reads it
    ("x>1", {"x": "1_000"}, False),
]


@pytest.mark.parametrize(("text", "labels", "want"), MATCHES)
def test_matching_is_kubernetes(text: str, labels: dict[str, str], want: bool) -> None:
    assert parse_selector(text).matches(labels) is want
    assert match_labels(parse_selector(text), labels) is want


def test_a_plain_mapping_still_means_match_labels() -> None:
    assert match_labels({"site": "berlin"}, {"site": "berlin", "x": "y"})
    assert not match_labels({"site": "berlin"}, {})
    assert match_labels({}, {})


def test_a_nul_ends_the_selector_as_in_go() -> None:
    assert str(parse_selector("a=b\x00,garbage!!")) == "a=b"


def test_jitter_is_within_ten_percent() -> None:
    assert jittered(10, 0.0) == 9.0
    assert jittered(10, 0.999999) == pytest.approx(11.0, rel=1e-5)
    assert all(9.0 <= jittered(10) <= 11.0 for _ in range(1000))
