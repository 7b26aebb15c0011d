"""Export JSON Schema files of the topic records, for consumers in other languages.

``python -m schemas.export`` rewrites ``schemas/jsonschema/<topic>.json``;
``python -m schemas.export --check`` exits 1 if a committed file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from schemas.records import TOPIC_RECORDS

SCHEMA_DIR = Path(__file__).parent / "jsonschema"


def schema_documents() -> dict[str, str]:
    """File name -> JSON text of every topic record's schema (stable formatting)."""
    docs: dict[str, str] = {}
    for topic, model in TOPIC_RECORDS.items():
        if isinstance(model, TypeAdapter):
            schema = model.json_schema(mode="serialization")
            schema.setdefault("title", "SessionCommand")
        else:
            assert issubclass(model, BaseModel)
            schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"livestream-analytics/{topic}.json"
        schema["description"] = schema.get("description") or f"Value of the `<prefix>.{topic}` topic."
        docs[f"{topic}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return docs


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    return [
        name
        for name, text in schema_documents().items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale JSON Schema files (run `make schemas`): {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in schema_documents().items():
        (SCHEMA_DIR / name).write_text(text)
        print(f"wrote {SCHEMA_DIR / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
