"""The shipped JSON Schemas of results.json and matrix.json, and the checks that use them.

Other tools read these files, so their format is a contract: the schemas under
``reports/schema/`` describe it, the writers check what they write against them (a harness that
writes a file its own readers refuse is a bug, and the tests catch it at the source), and the
readers (``matrix``, ``diff``, ``gate``, ``merge``) refuse a file that does not match, or that
carries a schema version this gpuconform does not know, with one line naming the file and the
first offending field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any, Literal

Kind = Literal["results", "matrix"]

#: Schema versions this gpuconform reads, per document kind.
SUPPORTED: Mapping[Kind, tuple[int, ...]] = {"results": (1,), "matrix": (1,)}
MATRIX_FORMAT = "gpuconform-matrix"


class SchemaError(ValueError):
    """A document that does not match its shipped schema, or of an unknown schema version."""


def schema_text(kind: Kind) -> str:
    """The schema document of ``kind`` as shipped in the package."""
    return (
        resources.files("gpuconform.reports")
        .joinpath("schema", f"{kind}.schema.json")
        .read_text(encoding="utf-8")
    )


@cache
def _validator(kind: Kind) -> Any:
    try:
        import jsonschema
    except ImportError as exc:  # a declared dependency; say how to get it back
        raise SchemaError(f"cannot check {kind} files: {exc} (hint: pip install jsonschema)") from None
    schema = json.loads(schema_text(kind))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def kind_of(doc: Any) -> Kind | None:
    """Which gpuconform document ``doc`` is: a matrix (by its format tag), results (a records list)."""
    if isinstance(doc, Mapping) and doc.get("format") == MATRIX_FORMAT:
        return "matrix"
    if isinstance(doc, Mapping) and isinstance(doc.get("records"), list):
        return "results"
    return None


def _where(path: Any) -> str:
    parts = [str(p) for p in path]
    return "/".join(parts) if parts else "(top level)"


def validate(doc: Any, kind: Kind, source: str = "document") -> None:
    """Raise ``SchemaError`` (one line, with a hint) unless ``doc`` is a valid ``kind`` document.

    The version is checked first, so a file from a newer gpuconform is named as such instead of
    being reported as some field that does not match.
    """
    version = doc.get("schema") if isinstance(doc, Mapping) else None
    known = SUPPORTED[kind]
    if version not in known:
        shown = "none" if version is None else repr(version)
        raise SchemaError(
            f"{source}: {kind} schema version {shown} is not one this gpuconform reads "
            f"({', '.join(map(str, known))}) (hint: upgrade gpuconform, or write the file again "
            f"with this version)"
        )
    errors = sorted(_validator(kind).iter_errors(doc), key=lambda e: (len(e.absolute_path), str(e.path)))
    if errors:
        first = errors[0]
        message = " ".join(first.message.split())
        if len(message) > 160:
            message = message[:157] + "..."
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SchemaError(
            f"{source} does not match the {kind} schema at {_where(first.absolute_path)}: {message}{more} "
            f"(hint: the format is reports/schema/{kind}.schema.json; was the file edited by hand?)"
        )
