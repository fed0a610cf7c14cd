"""Validates gitlab-provision's JSON output against its schema (schemas/*.schema.json).

    python validate_json.py SCHEMA_NAME FILE [--lines]

SCHEMA_NAME: e.g. status (schemas/status.schema.json). --lines: FILE holds one document per
line (up/down --json events, then the final report; logs --json). Prints nothing and exits 0
when every document validates; otherwise prints each error and exits 1.
"""

import json
import os
import sys

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schemas")


def registry():
    resources = []
    for name in os.listdir(SCHEMAS):
        with open(os.path.join(SCHEMAS, name)) as f:
            doc = json.load(f)
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


def main():
    name, path = sys.argv[1], sys.argv[2]
    lines = "--lines" in sys.argv
    reg = registry()
    with open(os.path.join(SCHEMAS, f"{name}.schema.json")) as f:
        schema = json.load(f)
    Draft202012Validator.check_schema(schema)
    with open(path) as f:
        text = f.read()
    docs = [json.loads(line) for line in text.splitlines() if line.strip()] if lines else [json.loads(text)]
    failed = False
    for i, doc in enumerate(docs):
        # In a stream of events, the last line is the command's report (its own schema).
        kind = doc.get("schema", "").split(".")[-1].split("/")[0] if lines else name
        with open(os.path.join(SCHEMAS, f"{kind}.schema.json")) as f:
            validator = Draft202012Validator(json.load(f), registry=reg)
        for error in validator.iter_errors(doc):
            failed = True
            print(f"document {i} ({kind}): {'/'.join(map(str, error.absolute_path))}: {error.message}")
    if not docs:
        print("no documents")
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
