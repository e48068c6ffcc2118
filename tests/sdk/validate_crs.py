"""Validates custom resources against the CRDs' openAPIV3Schema, as the API server would.

Usage: validate_crs.py CRDS.yaml RESOURCES.yaml...
Prints one line per resource: "ok Kind/name" or "invalid Kind/name: reason"; exits 1 if any
is invalid. OpenAPI's `nullable` is mapped to JSON Schema's null type, and objects with
declared properties refuse unknown fields (kubectl's default strict field validation).
"""
import sys

import jsonschema
import yaml


def structural(s):
    if not isinstance(s, dict):
        return s
    s = {k: structural(v) for k, v in s.items()}
    if "properties" in s:
        s["properties"] = {k: structural(v) for k, v in s["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields"):
            s.setdefault("additionalProperties", False)
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = structural(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = structural(s["items"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in s:
            s[key] = [structural(x) for x in s[key]]
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    return s


def main():
    crds = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    schemas = {}
    for c in crds:
        spec = c["spec"]
        for v in spec["versions"]:
            key = (f'{spec["group"]}/{v["name"]}', spec["names"]["kind"])
            schemas[key] = structural(v["schema"]["openAPIV3Schema"])
    bad = 0
    for path in sys.argv[2:]:
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            name = f'{doc.get("kind")}/{doc.get("metadata", {}).get("name")}'
            schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                print(f"invalid {name}: no CRD for {doc.get('apiVersion')} {doc.get('kind')}")
                bad += 1
                continue
            body = {k: v for k, v in doc.items() if k in ("spec", "status")}
            err = jsonschema.exceptions.best_match(
                jsonschema.Draft7Validator(schema).iter_errors(body)
            )
            if err is None:
                print(f"ok {name}")
            else:
                where = "/".join(str(p) for p in err.absolute_path)
                print(f"invalid {name}: {where}: {err.message}")
                bad += 1
    sys.exit(1 if bad else 0)


main()
