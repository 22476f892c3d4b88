"""50 JSON Schemas of the kinds apps send (API payloads, configs, extraction, tool calls).

Shapes, not toys: objects, arrays, enums, nesting, string formats, patterns, numeric
bounds, ``anyOf`` / ``oneOf``, ``$ref`` / ``$defs``, ``const``, optional keys. Each has a
prompt a chat model can answer. Used by tests/test_structured_output.py (a few) and
scripts/structured_validity.py (all, 3 seeds, both backends).
"""

from __future__ import annotations

S, I, N, B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}


def obj(props: dict, required=None, extra=False, **kw) -> dict:
    out = {"type": "object", "properties": props, "required": list(props) if required is None else required}
    if not extra:
        out["additionalProperties"] = False
    out.update(kw)
    return out


def arr(items: dict, lo=None, hi=None) -> dict:
    out = {"type": "array", "items": items}
    if lo is not None:
        out["minItems"] = lo
    if hi is not None:
        out["maxItems"] = hi
    return out


def s(max_len=40, **kw) -> dict:
    return {"type": "string", "maxLength": max_len, **kw}


ADDRESS = obj({"street": s(), "city": s(), "zip": s(pattern=r"^[0-9]{5}$"), "country": s(2, minLength=2)})

SCHEMAS: list[tuple[str, str, dict]] = [
    ("person", "Describe a person.", obj({"name": s(), "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("cat", "Describe a cat.", obj({"name": s(), "color": {"enum": ["black", "white", "orange", "grey"]},
                                    "indoor": B})),
    ("book", "Recommend a book.", obj({"title": s(), "author": s(), "year": {"type": "integer", "minimum": 1450,
                                                                          "maximum": 2025}})),
    ("todo", "Write a todo item.", obj({"id": I, "task": s(), "done": B})),
    ("todo_list", "List three chores.", obj({"items": arr(s(30), 1, 5)})),
    ("weather", "Report today's weather in Paris.", obj({"city": s(), "temp_c": {"type": "number", "minimum": -60,
                                                                                  "maximum": 60},
                                                          "sky": {"enum": ["sunny", "cloudy", "rain", "snow"]}})),
    ("sentiment", "Classify: 'I love this phone.'", obj({"label": {"enum": ["positive", "negative", "neutral"]},
                                                         "score": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("yes_no", "Is the sky blue? Answer in JSON.", obj({"answer": {"type": "boolean"}})),
    ("email", "Give a contact.", obj({"name": s(), "email": {"type": "string", "format": "email", "maxLength": 40}})),
    ("date", "When is the meeting?", obj({"title": s(), "date": {"type": "string", "format": "date"}})),
    ("datetime", "Log an event.", obj({"event": s(), "at": {"type": "string", "format": "date-time"}})),
    ("uuid", "Create a user record.", obj({"id": {"type": "string", "format": "uuid"}, "username": s(20)})),
    ("ipv4", "Describe a server.", obj({"host": s(30), "ip": {"type": "string", "format": "ipv4"},
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535}})),
    ("phone", "Give a US phone contact.", obj({"name": s(), "phone": {"type": "string",
                                                                      "pattern": r"^\([0-9]{3}\) [0-9]{3}-[0-9]{4}$"}})),
    ("sku", "Describe a product.", obj({"sku": {"type": "string", "pattern": r"^[A-Z]{3}-[0-9]{4}$"},
                                        "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000},
                                        "in_stock": B})),
    ("hex_color", "Pick a brand color.", obj({"name": s(20), "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}})),
    ("semver", "Describe a software release.", obj({"package": s(20), "version": {"type": "string",
                                                                                    "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"}})),
    ("address", "Give a US address.", ADDRESS),
    ("customer", "Create a customer.", obj({"name": s(), "address": ADDRESS, "vip": B})),
    ("order", "Create an order.", obj({"order_id": I, "lines": arr(obj({"sku": s(12), "qty": {"type": "integer",
                                                                                              "minimum": 1, "maximum": 99}}),
                                                                     1, 4),
                                       "currency": {"enum": ["USD", "EUR", "GBP"]}})),
    ("invoice", "Write an invoice.", obj({"number": s(12), "total": {"type": "number", "minimum": 0},
                                          "paid": B, "due": {"type": "string", "format": "date"}})),
    ("recipe", "Give a recipe.", obj({"name": s(), "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                                      "ingredients": arr(s(30), 1, 6), "vegan": B})),
    ("movie", "Recommend a movie.", obj({"title": s(), "genres": arr({"enum": ["drama", "comedy", "action", "horror",
                                                                                "sci-fi"]}, 1, 3),
                                         "rating": {"type": "number", "minimum": 0, "maximum": 10}})),
    ("tags", "Tag this article about cooking.", obj({"tags": arr(s(15, pattern="^[a-z]+$"), 1, 5)})),
    ("matrix", "Give a 2x2 matrix.", obj({"rows": arr(arr(I, 2, 2), 2, 2)})),
    ("point", "Give a point on a map.", obj({"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                             "lon": {"type": "number", "minimum": -180, "maximum": 180}})),
    ("range", "Give a temperature range.", obj({"low": {"type": "integer", "minimum": -50, "maximum": 0},
                                                "high": {"type": "integer", "minimum": 1, "maximum": 50}})),
    ("multiple_of", "Pick a box size.", obj({"width": {"type": "integer", "multipleOf": 5, "minimum": 5,
                                                       "maximum": 100}, "label": s(20)})),
    ("const", "Make an API response.", obj({"status": {"const": "ok"}, "count": {"type": "integer", "minimum": 0}})),
    ("optional", "Describe a pet.", obj({"name": s(), "species": s(20), "age": I}, required=["name"])),
    ("nullable", "Describe a person's middle name.", obj({"first": s(), "middle": {"type": ["string", "null"],
                                                                                     "maxLength": 20}})),
    ("any_of_value", "Give a setting.", obj({"key": s(20), "value": {"anyOf": [I, B, s(20)]}})),
    ("any_of_shape", "Describe a shape.", {"anyOf": [
        obj({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}}),
        obj({"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0}})]}),
    ("one_of", "Give a payment method.", obj({"method": {"oneOf": [
        obj({"card": s(19, pattern="^[0-9 ]+$")}), obj({"iban": s(34, pattern="^[A-Z0-9]+$")})]}})),
    ("ref_person", "Describe two friends.", {
        "$defs": {"friend": obj({"name": s(), "age": {"type": "integer", "minimum": 0, "maximum": 120}})},
        **obj({"a": {"$ref": "#/$defs/friend"}, "b": {"$ref": "#/$defs/friend"}})}),
    ("ref_list", "List some employees.", {
        "$defs": {"emp": obj({"name": s(), "role": {"enum": ["dev", "ops", "pm"]}})},
        **obj({"team": arr({"$ref": "#/$defs/emp"}, 1, 3)})}),
    ("definitions", "Describe a car.", {
        "definitions": {"engine": obj({"hp": {"type": "integer", "minimum": 50, "maximum": 1500},
                                       "fuel": {"enum": ["petrol", "diesel", "electric"]}})},
        **obj({"make": s(20), "model": s(20), "engine": {"$ref": "#/definitions/engine"}})}),
    ("tree", "Make a small folder tree.", {
        "$defs": {"node": {"type": "object", "properties": {"name": s(20), "children": arr({"$ref": "#/$defs/node"},
                                                                                         0, 2)},
                           "required": ["name"], "additionalProperties": False}},
        "$ref": "#/$defs/node"}),
    ("tool_call", "Call the weather tool for Oslo.", obj({"name": {"const": "get_weather"},
                                                          "arguments": obj({"city": s(), "unit": {"enum": ["c", "f"]}})})),
    ("tool_choice", "Pick a tool to send an email.", obj({"tool": {"enum": ["search", "send_email", "calendar"]},
                                                          "reason": s(60)})),
    ("extraction", "Extract: 'Ann (34) lives in Rome.'", obj({"name": s(), "age": I, "city": s()})),
    ("entities", "List entities in: 'Apple hired Tim in Cupertino.'", obj({"entities": arr(
        obj({"text": s(20), "type": {"enum": ["ORG", "PERSON", "LOC"]}}), 1, 4)})),
    ("qa", "Answer: what is 2+2?", obj({"answer": {"type": "integer"}, "confidence": {"type": "number",
                                                                                      "minimum": 0, "maximum": 1}})),
    ("translation", "Translate 'hello' to French.", obj({"source": s(20), "target": s(20),
                                                         "lang": {"enum": ["fr", "de", "es"]}})),
    ("summary", "Summarize: cats sleep a lot.", obj({"summary": s(80), "words": {"type": "integer", "minimum": 1}})),
    ("log_entry", "Write a log line.", obj({"level": {"enum": ["DEBUG", "INFO", "WARN", "ERROR"]}, "msg": s(60),
                                            "code": {"type": "integer", "minimum": 100, "maximum": 599}})),
    ("config_file", "Write a server config.", obj({"host": s(30), "port": {"type": "integer", "minimum": 1,
                                                                            "maximum": 65535},
                                                   "debug": B, "workers": {"type": "integer", "minimum": 1,
                                                                           "maximum": 64}})),
    ("feature_flags", "List feature flags.", obj({"flags": arr(obj({"name": s(20, pattern="^[a-z_]+$"), "on": B}),
                                                               1, 4)})),
    ("unique_numbers", "Pick three lottery numbers.", obj({"numbers": {"type": "array", "items": {
        "type": "integer", "minimum": 1, "maximum": 49}, "minItems": 3, "maxItems": 3}})),
    ("open_object", "Describe anything as JSON.", {"type": "object", "properties": {"kind": s(20)},
                                                   "required": ["kind"]}),
]

assert len(SCHEMAS) == 50, len(SCHEMAS)
assert len({name for name, _, _ in SCHEMAS}) == 50
