"""Ollama's model names: parsing, validity, case-insensitive identity and the short display form."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"
_DEFAULT_TAG = "latest"
# Ollama fills a part that a separator promised but the text left empty with this marker, so
# that "x:" or "/x" parse but fail the validity check.
_MISSING = "!MISSING!"

# Each part starts with a letter, digit or underscore; the rest differ by part.
_PART = {
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
}


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def valid(self) -> bool:
        parts = (self.host, self.namespace, self.model, self.tag)
        return all(
            _PART[kind].fullmatch(part) is not None
            for kind, part in zip(("host", "namespace", "model", "tag"), parts, strict=True)
        )

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity: Ollama matches every part of a name case-insensitively."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    @property
    def display(self) -> str:
        """The shortest form, as /api/tags and /api/ps show it ("llama3.2:latest")."""
        if self.host.lower() != _DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != _DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        """The fully qualified form used in capability errors and manifest paths."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def _cut_promised(text: str, sep: str) -> tuple[str, str, bool]:
    before, found, after = text.rpartition(sep)
    if not found:
        return text, "", False
    return before or _MISSING, after or _MISSING, True


def parse_name(text: str) -> ModelName:
    """model.ParseName: fill in the default host, namespace and tag; check `.valid` after."""
    text = text.strip()
    host = namespace = tag = ""
    if text.rfind(":") > text.rfind("/"):
        text, tag, _ = _cut_promised(text, ":")
    rest, model, promised = _cut_promised(text, "/")
    if not promised:
        model = rest
    else:
        rest, namespace, promised = _cut_promised(rest, "/")
        if not promised:
            namespace = rest
        else:
            _, scheme_sep, after = rest.partition("://")
            host = after if scheme_sep else rest
    return ModelName(
        host or _DEFAULT_HOST, namespace or _DEFAULT_NAMESPACE, model, tag or _DEFAULT_TAG
    )
