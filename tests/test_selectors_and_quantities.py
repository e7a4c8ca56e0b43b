"""Label selectors and quantities exactly as Kubernetes writes and reads them."""

import pytest

from metrics_adapter.quantity import format_quantity
from metrics_adapter.selectors import Operator, Requirement, SelectorError, parse_selector

LABELS = {"app": "chat", "tier": "gpu", "example.com/team": "ml", "version": "3", "empty": ""}


@pytest.mark.parametrize(
    "text, requirements",
    [
        ("", ()),
        ("app=chat", (Requirement("app", Operator.EQUALS, ("chat",)),)),
        ("app==chat", (Requirement("app", Operator.EQUALS, ("chat",)),)),
        (" app != chat ", (Requirement("app", Operator.NOT_EQUALS, ("chat",)),)),
        ("app in (chat, code)", (Requirement("app", Operator.IN, ("chat", "code")),)),
        ("app notin (x)", (Requirement("app", Operator.NOT_IN, ("x",)),)),
        ("app", (Requirement("app", Operator.EXISTS),)),
        ("!app", (Requirement("app", Operator.DOES_NOT_EXIST),)),
        (
            "version>2,version<10",
            (Requirement("version", Operator.GREATER, ("2",)), Requirement("version", Operator.LESS, ("10",))),
        ),
        ("empty=", (Requirement("empty", Operator.EQUALS, ("",)),)),
        ("app in (chat,)", (Requirement("app", Operator.IN, ("chat", "")),)),
        (
            "example.com/team=ml,tier in (gpu,cpu),!spot",
            (
                Requirement("example.com/team", Operator.EQUALS, ("ml",)),
                Requirement("tier", Operator.IN, ("gpu", "cpu")),
                Requirement("spot", Operator.DOES_NOT_EXIST),
            ),
        ),
    ],
)
def test_parses_like_apimachinery(text, requirements):
    assert parse_selector(text).requirements == requirements


@pytest.mark.parametrize(
    "text, matches",
    [
        ("app=chat", True),
        ("app=code", False),
        ("app!=code", True),
        ("missing!=x", True),  # absent keys satisfy != and notin
        ("missing notin (x)", True),
        ("missing in (x)", False),
        ("app in (code,chat),tier", True),
        ("!tier", False),
        ("example.com/team=ml", True),
        ("version>2", True),
        ("version<3", False),
        ("app>2", False),
        ("empty=", True),
    ],
)
def test_matching(text, matches):
    assert parse_selector(text).matches(LABELS) is matches


@pytest.mark.parametrize(
    "text, message",
    [
        ("app=", None),  # valid: empty value
        ("app in ()", "empty set"),
        ("app in (a", "unexpected end"),
        ("app in a", "expected '('"),
        ("app=chat,", "trailing ','"),
        ("=chat", "expected a label key"),
        ("app===chat", "expected a label value"),
        ("-app=x", "invalid label key '-app'"),
        ("app=chat$", "invalid label value 'chat$'"),
        ("Example.com/x=y", "prefix must be a DNS subdomain"),
        ("app>two", "must be an integer"),
        ("app chat", "expected an operator"),
        ("a" * 64 + "=x", "63 characters"),
    ],
)
def test_bad_selectors_say_what_is_wrong(text, message):
    if message is None:
        parse_selector(text)
        return
    with pytest.raises(SelectorError, match=message.replace("(", r"\(").replace("$", r"\$")):
        parse_selector(text)


@pytest.mark.parametrize(
    "value, text", [(7, "7"), (7.5, "7500m"), (0, "0"), (-0.25, "-250m"), (0.0004, "0"), (12.3456, "12346m")]
)
def test_quantities(value, text):
    assert format_quantity(value) == text


def test_quantity_rejects_nan():
    with pytest.raises(ValueError):
        format_quantity(float("nan"))
