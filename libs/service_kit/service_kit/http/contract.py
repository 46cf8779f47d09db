"""A service's HTTP API, declared once: each operation's request and reply models (pydantic v2).
The routes validate requests with them (service_kit.http.routes) and the OpenAPI document is
written from them (service_kit.http.openapi); a request's shape is written nowhere else.

pydantic itself rather than spectree or flask-openapi3: those wrap the view function, and here the
kit runs a service's hooks in its own order (admission before preparation, the deadline read once);
pydantic's validation and JSON Schema are what they use underneath. Limits a deployment configures
(MAX_LINES, ...) are checked against the running service's settings (validation context), and the
document states their defaults.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

# Where a request's fields come from, besides a body's media type.
QUERY = "query"
# The reply body as it is (an image): no JSON schema.
BINARY = None


def is_raw(media_type: str) -> bool:
    """A body that is the bytes themselves (an image), not fields in JSON or a form."""
    return media_type not in (QUERY, "application/json", "multipart/form-data")


@dataclasses.dataclass(frozen=True)
class Operation:
    """One method on one path. `request` maps where the fields come from (QUERY, or each body media
    type the operation takes: "application/json", "multipart/form-data", "image/*", ...) to the
    model of what arrives there (a model, or any type pydantic validates, e.g. a union of models);
    for a raw body the model has one `bytes` field. `replies` maps the media types a 200 can be in
    to their models (BINARY for bytes); the first is the default when the caller has no preference.
    `errors` maps the statuses the operation's own checks answer with, besides the kit's (400, 413,
    415, 502, 503, 504), to what they mean, with their error codes (the document says it).
    `encode`, when given, makes the reply instead of the service's `encode` hook, with its arguments:
    (request, items, prediction, reply model)."""

    method: str
    path: str
    summary: str
    request: Mapping[str, Any]
    replies: Mapping[str, Any]
    errors: Mapping[int, str] = dataclasses.field(default_factory=dict)
    # Read the body as JSON whatever its Content-Type says (the source documents' clients send none).
    json_whatever_the_content_type: bool = False
    description: str = ""
    encode: Callable[[Any, list, Any, Any], Any] | None = None

    @property
    def operation_id(self) -> str:
        return f"{self.method.lower()}_{self.path.strip('/').replace('/', '_')}"

    def __post_init__(self) -> None:
        # Built once: a TypeAdapter compiles its validator.
        object.__setattr__(self, "_adapters", {source: TypeAdapter(model) for source, model in self.request.items()})

    def adapter(self, source: str) -> TypeAdapter:
        return self._adapters[source]  # type: ignore[attr-defined]


class Strict(BaseModel):
    """A request model that refuses fields it does not know: the document says what is accepted."""

    model_config = ConfigDict(extra="forbid")


class Reply(BaseModel):
    """A reply model: fields in the order declared, as the JSON leaves."""


def refuse(code: str, message: str, status: int = 400) -> PydanticCustomError:
    """A validation failure with our error code and HTTP status (service_kit.http.routes reads both)."""
    return PydanticCustomError(code, message, {"status": status})


def _from_base64(value: Any) -> bytes:
    """Standard or URL-safe base64, padding optional (the documents' clients strip it)."""
    if not isinstance(value, str):
        raise refuse("invalid_field", "must be a base64 string")
    cleaned = "".join(value.split()).replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise refuse("invalid_base64", "is not valid base64") from None


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("invalid_utf8", "does not decode to UTF-8 text") from None


# Base64, standard or URL-safe, padding optional: groups of four, then two or three more.
# Never empty: what an empty value stands for (no text, no image) is refused (422).
_BASE64 = WithJsonSchema({"type": "string", "contentEncoding": "base64", "minLength": 1,
                          "pattern": r"^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$"})
# Bytes sent as base64 text (JSON fields, query parameters).
Base64Bytes = Annotated[bytes, BeforeValidator(_from_base64), _BASE64]
# UTF-8 text sent as base64 (a query parameter that must survive any URL).
Base64Text = Annotated[str, BeforeValidator(lambda value: _utf8(_from_base64(value))), _BASE64]


def at_most(settings_class: type, setting: str, code: str, what: str, documented: bool = True) -> list[Any]:
    """A length limit a deployment configures (`settings.<setting>`), over which the answer is 413
    `code`; the document states the default (unless not `documented`: a limit on a decoded value,
    which the schema of its encoding cannot state)."""
    default = next(f.default for f in dataclasses.fields(settings_class) if f.name == setting)

    def check(value: Any, info: ValidationInfo) -> Any:
        limit = getattr((info.context or {}).get("settings"), setting, default)
        if len(value) > limit:
            raise refuse(code, f"has {len(value)} {what}; the limit is {limit}", 413)
        return value

    if not documented:
        return [AfterValidator(check)]
    keyword = "maxLength" if what == "characters" else "maxItems"
    return [AfterValidator(check), Field(json_schema_extra={keyword: default})]


def not_blank(code: str, message: str, status: int = 422) -> AfterValidator:
    """A string that holds something besides whitespace; else `status` `code`."""
    def check(value: str) -> str:
        if not value.strip():
            raise refuse(code, message, status)
        return value

    return AfterValidator(check)


def with_text(code: str, message: str, status: int = 422) -> Any:
    """not_blank, and the document says so (a pattern)."""
    return [not_blank(code, message, status), Field(json_schema_extra={"pattern": r"\S"})]


def exactly_one_of(**choices: type[BaseModel]) -> Any:
    """A JSON object with exactly one of these fields, validated as the model given for that field
    (a union whose document says oneOf); neither or both is 400 `missing_field`."""
    def present(value: Any) -> str | None:
        found = [name for name in choices if isinstance(value, dict) and name in value]
        return union_tag(found[0]) if len(found) == 1 else None

    names = " or ".join(f'"{name}"' for name in choices)
    members = tuple(Annotated[model, Tag(union_tag(name))] for name, model in choices.items())
    return Annotated[Union[members], Discriminator(  # noqa: UP007 - a union built from a tuple
        present, custom_error_type="missing_field", custom_error_message=f"give exactly one of {names}",
        custom_error_context={"status": 400})]


def union_tag(field: str) -> str:
    """How a union member shows in an error's location: braced, so that it is never a field's name."""
    return f"{{{field}}}"
