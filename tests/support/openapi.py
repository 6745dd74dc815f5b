"""The OpenAPI document as JSON Schema, to validate what the API really sends.

OpenAPI 3.0 writes "or null" as ``nullable: true``; JSON Schema validators need it as a
type, so the components are converted once and then referenced by name.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import jsonschema


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def _json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        if "enum" in converted:
            converted["enum"] = [*converted["enum"], None]
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@cache
def validator(component: str) -> jsonschema.Draft7Validator:
    components = _json_schema(document()["components"])
    assert component in components["schemas"], f"no component {component!r} in /api/schema/"
    schema = {"$ref": f"#/components/schemas/{component}", "components": components}
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def assert_matches(component: str, instance: Any) -> None:
    """Fail with the first difference between ``instance`` and the documented ``component``."""
    errors = sorted(validator(component).iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"{component}: {errors[0].message} at {list(errors[0].absolute_path)}"
