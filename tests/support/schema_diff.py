"""Breaking changes between two OpenAPI 3.0 documents, as a client generated from the
older one would meet them.

Breaking: a removed path, operation, parameter, response field, request field, enum
value, body variant, content type or success status; a parameter or request field that
becomes required; a type that changes; a response field that may now be missing or
null; a request value the new bounds refuse. Everything else (new paths, optional
parameters, response fields, enum values, descriptions, links) is additive.

No well-kept Python package does this (the maintained differ, oasdiff, is a Go binary),
and the rules a client cares about fit here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_NARROWER = {"minimum": 1, "exclusiveMinimum": 1, "minLength": 1, "minItems": 1, "minProperties": 1,
             "maximum": -1, "exclusiveMaximum": -1, "maxLength": -1, "maxItems": -1, "maxProperties": -1}


class _Docs:
    def __init__(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.old, self.new = old, new
        self.seen: set[tuple[str, str, str]] = set()

    @staticmethod
    def resolve(doc: dict[str, Any], node: Any) -> tuple[Any, str]:
        ref = ""
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            node = doc
            for part in ref.removeprefix("#/").split("/"):
                node = node[part]
        return node, ref

    def schema(self, old: Any, new: Any, where: str, direction: str) -> Iterator[str]:
        old, old_ref = self.resolve(self.old, old)
        new, new_ref = self.resolve(self.new, new)
        if not isinstance(old, dict) or not isinstance(new, dict):
            return
        if old_ref and new_ref:  # a cycle or a component met twice in the same role
            key = (old_ref, new_ref, direction)
            if key in self.seen:
                return
            self.seen.add(key)
        request = direction == "request"
        if "type" in old and "type" in new and old["type"] != new["type"]:
            yield f"{where}: type {old['type']} became {new['type']}"
        if request and old.get("nullable") and not new.get("nullable"):
            yield f"{where}: null is no longer accepted"
        if not request and new.get("nullable") and not old.get("nullable"):
            yield f"{where}: may now be null"
        if "enum" in old:
            removed = [v for v in old["enum"] if v not in new.get("enum", old["enum"])]
            if removed:
                yield f"{where}: enum value(s) removed: {', '.join(map(repr, removed))}"
        if request:
            for key, sign in _NARROWER.items():
                if key in new and (key not in old or (new[key] - old[key]) * sign > 0):
                    yield f"{where}: {key} narrowed to {new[key]}"
            if new.get("pattern", old.get("pattern")) != old.get("pattern"):
                yield f"{where}: pattern changed to {new['pattern']!r}"
            if new.get("additionalProperties") is False and old.get("additionalProperties") is not False:
                yield f"{where}: unknown keys are now refused"
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        for name in old_props:
            if name not in new_props:
                yield f"{where}: field {name!r} removed"
            else:
                yield from self.schema(old_props[name], new_props[name], f"{where}.{name}", direction)
        old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
        if request:
            for name in sorted(new_required - old_required):
                yield f"{where}: field {name!r} is newly required"
        else:
            for name in sorted((old_required - new_required) & set(new_props)):
                yield f"{where}: field {name!r} may now be missing"
        if "items" in old and "items" in new:
            yield from self.schema(old["items"], new["items"], f"{where}[]", direction)
        if isinstance(old.get("additionalProperties"), dict) and isinstance(new.get("additionalProperties"), dict):
            yield from self.schema(old["additionalProperties"], new["additionalProperties"], f"{where}{{}}", direction)
        for combiner in ("oneOf", "anyOf", "allOf"):
            yield from self._variants(old.get(combiner, []), new.get(combiner, []), f"{where} {combiner}", direction)

    def _variants(self, old: list[Any], new: list[Any], where: str, direction: str) -> Iterator[str]:
        def key(item: Any, index: int) -> str:
            return item["$ref"].rsplit("/", 1)[-1] if isinstance(item, dict) and "$ref" in item else f"#{index}"

        new_by_key = {key(item, i): item for i, item in enumerate(new)}
        for i, item in enumerate(old):
            name = key(item, i)
            if name not in new_by_key:
                yield f"{where}: variant {name} removed"
            else:
                yield from self.schema(item, new_by_key[name], f"{where} {name}", direction)

    def operation(self, old: dict[str, Any], new: dict[str, Any], where: str) -> Iterator[str]:
        def params(doc: dict[str, Any], op: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
            resolved = (self.resolve(doc, p)[0] for p in op.get("parameters", []))
            return {(p["in"], p["name"]): p for p in resolved}

        old_params, new_params = params(self.old, old), params(self.new, new)
        for (location, name), param in old_params.items():
            if (location, name) not in new_params:
                yield f"{where}: {location} parameter {name!r} removed"
            else:
                yield from self.schema(param.get("schema"), new_params[(location, name)].get("schema"),
                                       f"{where} {location} parameter {name!r}", "request")
        for (location, name), param in new_params.items():
            was = old_params.get((location, name), {})
            if param.get("required") and not was.get("required"):
                yield f"{where}: {location} parameter {name!r} is newly required"
        old_body = self.resolve(self.old, old.get("requestBody", {}))[0]
        new_body = self.resolve(self.new, new.get("requestBody", {}))[0]
        if new_body.get("required") and not old_body.get("required"):
            yield f"{where}: a request body is newly required"
        for media, content in old_body.get("content", {}).items():
            if media not in new_body.get("content", {}):
                yield f"{where}: request body {media} no longer accepted"
            else:
                yield from self.schema(content.get("schema"), new_body["content"][media].get("schema"),
                                       f"{where} request body", "request")
        new_responses = new.get("responses", {})
        for status, response in old.get("responses", {}).items():
            if status not in new_responses:
                if status.startswith("2"):
                    yield f"{where}: no longer answers {status}"
                continue
            old_content = self.resolve(self.old, response)[0].get("content", {})
            new_content = self.resolve(self.new, new_responses[status])[0].get("content", {})
            for media, content in old_content.items():
                if media not in new_content:
                    yield f"{where} {status}: no longer answers {media}"
                else:
                    yield from self.schema(content.get("schema"), new_content[media].get("schema"),
                                           f"{where} {status} body", "response")


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every change from ``old`` to ``new`` that breaks a client of ``old``, one line each."""
    docs = _Docs(old, new)
    found: list[str] = []
    new_paths = new.get("paths", {})
    for path, item in old.get("paths", {}).items():
        if path not in new_paths:
            found.append(f"{path}: path removed")
            continue
        for method in METHODS:
            if method in item:
                where = f"{method.upper()} {path}"
                if method not in new_paths[path]:
                    found.append(f"{where}: operation removed")
                else:
                    found.extend(docs.operation(item[method], new_paths[path][method], where))
    # Components no operation returns (the SSE and WebSocket messages) are published types too.
    new_components = new.get("components", {}).get("schemas", {})
    for name, schema in old.get("components", {}).get("schemas", {}).items():
        if name not in new_components:
            found.append(f"component {name}: removed")
        else:
            direction = "request" if name.endswith("Request") else "response"
            docs.seen.clear()  # each component on its own: its messages name it
            found.extend(docs.schema(schema, new_components[name], f"component {name}", direction))
    return list(dict.fromkeys(found))
