"""The template catalogue: versions per locale, sandbox, escaping, strict variables, stable refusals."""

from __future__ import annotations

import pytest

from services.chassis.errors import InvalidArgument, Reason
from services.notify.templates import TemplateCatalogue, check_variables

VARIABLES = {"name": "Asha", "detail": "shipped", "business": "Acme", "headline": "New"}


@pytest.fixture(scope="module")
def catalogue() -> TemplateCatalogue:
    return TemplateCatalogue()


def refusal(exc: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return str(exc.value.reason)


def test_every_template_exists_in_english_and_hindi(catalogue: TemplateCatalogue) -> None:
    for name in catalogue.names:
        assert catalogue.version(name, "en") == f"{name}/en/v1"
        assert catalogue.version(name, "hi") == f"{name}/hi/v1"


def test_html_is_escaped_and_text_is_not(catalogue: TemplateCatalogue) -> None:
    rendered = catalogue.render("account_update", "en", {**VARIABLES, "name": "<script>x</script>"})
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
    assert "<script>x</script>" in rendered.text


def test_a_subject_is_one_line_whatever_the_variables(catalogue: TemplateCatalogue) -> None:
    rendered = catalogue.render("newsletter", "en", {**VARIABLES, "headline": "Hi\r\nBcc: victim@example.com"})
    assert "\n" not in rendered.subject and "\r" not in rendered.subject


def test_whatsapp_parameters_follow_the_template_file(catalogue: TemplateCatalogue) -> None:
    rendered = catalogue.render("newsletter", "hi", VARIABLES)
    assert rendered.wa_template == "steward_newsletter"
    assert rendered.wa_parameters == ("Asha", "New")


def test_unknown_template_locale_and_missing_variables_are_refused(catalogue: TemplateCatalogue) -> None:
    with pytest.raises(InvalidArgument) as unknown:
        catalogue.version("nope", "en")
    assert refusal(unknown) == Reason.UNKNOWN_TEMPLATE
    with pytest.raises(InvalidArgument) as locale:
        catalogue.version("newsletter", "fr")
    assert refusal(locale) == Reason.UNKNOWN_LOCALE
    with pytest.raises(InvalidArgument) as missing:
        catalogue.render("newsletter", "en", {"name": "secret-value"})
    assert refusal(missing) == Reason.MISSING_TEMPLATE_VARIABLE
    assert "secret-value" not in missing.value.message


def test_the_sandbox_refuses_unsafe_attribute_access(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    folder = root / "evil" / "en"
    folder.mkdir(parents=True)
    (folder / "v1.subject").write_text("{{ name.__class__.__mro__[1].__subclasses__() }}")
    (folder / "v1.txt").write_text("x")
    (folder / "v1.html").write_text("x")
    with pytest.raises(InvalidArgument):
        TemplateCatalogue(root).render("evil", "en", {"name": "a"})


@pytest.mark.parametrize(
    "variables",
    [{f"v{i}": "x" for i in range(33)}, {"Bad": "x"}, {"ok": "x" * 2001}, {"1x": "x"}],
)
def test_variable_maps_are_small_and_named_plainly(variables: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        check_variables(variables)
