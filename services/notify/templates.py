"""The template catalogue: Jinja2 files under ``services/notify/templates/<name>/<locale>/v<n>.<part>``.

Parts: ``subject`` and ``txt`` (plain text, not escaped), ``html`` (autoescaped), and for templates WhatsApp can
carry ``wa`` (first line: the approved WhatsApp template's name; each further line: one positional body
parameter as a Jinja expression, so the parameter count is fixed by the file and checked before sending).
The highest ``v<n>`` of a name and locale is the current version; its id ``<name>/<locale>/v<n>`` is part of
every delivery's idempotency key, so a new version is a new message.

Rendering runs in Jinja's ``SandboxedEnvironment`` with ``StrictUndefined``: an unknown template or locale, or a
missing variable, is ``INVALID_ARGUMENT`` with a stable reason, and the message never echoes a variable's value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from services.chassis.errors import InvalidArgument, Reason

__all__ = ["LOCALES", "Rendered", "TemplateCatalogue", "check_variables"]

LOCALES = ("en", "hi")
TEMPLATE_DIR = Path(__file__).parent / "templates"
# Who a template is for: account notices go to tenant contacts; the rest are what tenants send their subjects.
CONTACT_TEMPLATES = frozenset(
    {"dsr_received", "dsr_completed", "dsr_reminder", "dsr_extended", "dsr_overdue"}
    | {"offboarding_reminder", "shred_certificate", "legal_disclosure", "support_access"}
)
MARKETING_TEMPLATES = frozenset({"newsletter"})
MAX_VARIABLES = 32
MAX_VARIABLE_CHARS = 2000
_VARIABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_VERSION_FILE = re.compile(r"v(\d{1,4})\.subject")


@dataclass(frozen=True, slots=True)
class Rendered:
    """One template rendered for one recipient (in memory only)."""

    version: str
    subject: str
    text: str
    html: str
    wa_template: str
    wa_parameters: tuple[str, ...]


def check_variables(variables: dict[str, str]) -> None:
    """Variables are a small map of short strings with lower-case names (values are never echoed)."""
    if len(variables) > MAX_VARIABLES:
        raise InvalidArgument(f"at most {MAX_VARIABLES} template variables are allowed")
    for name, value in variables.items():
        if not _VARIABLE_NAME.fullmatch(name):
            raise InvalidArgument(
                "template variable names are 1-64 lower-case letters, digits or '_', starting with a letter"
            )
        if len(value) > MAX_VARIABLE_CHARS:
            raise InvalidArgument(
                f"template variable {name} is longer than {MAX_VARIABLE_CHARS} characters", metadata={"field": name}
            )


class TemplateCatalogue:
    """Loads the catalogue once (file layout read at start) and renders in a sandbox."""

    def __init__(self, root: Path = TEMPLATE_DIR) -> None:
        self.root = root
        self._text = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
        self._html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=select_autoescape(default=True))
        self._versions: dict[tuple[str, str], int] = {}
        for subject_file in root.glob("*/*/v*.subject"):
            found = _VERSION_FILE.fullmatch(subject_file.name)
            if found is None:
                continue
            key = (subject_file.parent.parent.name, subject_file.parent.name)
            self._versions[key] = max(self._versions.get(key, 0), int(found.group(1)))
        self._sources: dict[Path, str] = {}
        self._templates: dict[tuple[int, Path], Template] = {}
        self._wa_parameters: dict[tuple[int, Path], list[Template]] = {}

    @property
    def names(self) -> frozenset[str]:
        """Every template name in the catalogue."""
        return frozenset(name for name, _ in self._versions)

    def version(self, name: str, locale: str) -> str:
        """The current version id ``<name>/<locale>/v<n>``; INVALID_ARGUMENT for an unknown name or locale."""
        if name not in self.names:
            raise InvalidArgument(
                "unknown template; see the catalogue in services/notify/templates", reason=Reason.UNKNOWN_TEMPLATE
            )
        if locale not in LOCALES or (name, locale) not in self._versions:
            raise InvalidArgument(
                f"unknown locale; templates exist in {', '.join(LOCALES)}",
                reason=Reason.UNKNOWN_LOCALE,
                metadata={"template": name},
            )
        return f"{name}/{locale}/v{self._versions[(name, locale)]}"

    def _source(self, path: Path) -> str:
        source = self._sources.get(path)
        if source is None:
            source = path.read_text(encoding="utf-8")
            self._sources[path] = source
        return source

    def _compiled(self, env: SandboxedEnvironment, path: Path) -> Template:
        # from_string compiles on every call (Jinja caches only loader templates): compile each file once.
        key = (id(env), path)
        template = self._templates.get(key)
        if template is None:
            template = env.from_string(self._source(path))
            self._templates[key] = template
        return template

    def _whatsapp(self, path: Path) -> tuple[str, list[Template]]:
        # The .wa file: the template name, then one parameter per line, each compiled once like the other files.
        key = (id(self._text), path)
        first, *lines = [line for line in self._source(path).splitlines() if line.strip()]
        parameters = self._wa_parameters.get(key)
        if parameters is None:
            parameters = [self._text.from_string(line) for line in lines]
            self._wa_parameters[key] = parameters
        return first.strip(), parameters

    def render(self, name: str, locale: str, variables: dict[str, str], *, version: str = "") -> Rendered:
        """Render ``name`` in ``locale`` (the current version, or ``version`` when a queued delivery pinned one)."""
        version = version or self.version(name, locale)
        template, loc, ver = version.split("/")
        folder = self.root / template / loc
        if not (folder / f"{ver}.subject").is_file():
            raise InvalidArgument("unknown template version", reason=Reason.UNKNOWN_TEMPLATE)
        try:
            subject = self._compiled(self._text, folder / f"{ver}.subject").render(variables)
            subject = " ".join(subject.split())  # one line: no header injection
            text = self._compiled(self._text, folder / f"{ver}.txt").render(variables)
            html = self._compiled(self._html, folder / f"{ver}.html").render(variables)
            wa_name, wa_parameters = "", tuple[str, ...]()
            wa_file = folder / f"{ver}.wa"
            if wa_file.is_file():
                wa_name, parameters = self._whatsapp(wa_file)
                wa_parameters = tuple(line.render(variables).strip() for line in parameters)
        except UndefinedError:
            raise InvalidArgument(
                "a variable the template needs is missing; see the template's files for its variables",
                reason=Reason.MISSING_TEMPLATE_VARIABLE,
                metadata={"template": version},
            ) from None
        except TemplateError:
            # Sandbox refusals (unsafe attribute access) and syntax errors: the template or the input is wrong.
            raise InvalidArgument(
                "the template could not be rendered with these variables", metadata={"template": version}
            ) from None
        return Rendered(version, subject, text, html, wa_name, wa_parameters)

    def has_whatsapp(self, version: str) -> bool:
        """Does this version carry a WhatsApp template?"""
        template, loc, ver = version.split("/")
        return (self.root / template / loc / f"{ver}.wa").is_file()
