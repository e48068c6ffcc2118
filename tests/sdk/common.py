"""Shared by the SDK drivers: the environment the Rust test passes, step reporting, waiting
for a session to settle, and declared-type checks of answers.

Every driver takes a phase (`setup` or `teardown`) and keeps what teardown needs in the JSON
file named by MIRROR_STATE. Each operation that succeeds prints `OK <Action>`; the first that
fails raises, so the script exits non-zero with the SDK's own error."""
import json
import os
import sys
import time

ENDPOINT = os.environ.get("MIRROR_ENDPOINT", "127.0.0.1:18080")
HOST, PORT = ENDPOINT.rsplit(":", 1)
AK = os.environ.get("MIRROR_AK", "")
SK = os.environ.get("MIRROR_SK", "")
SOURCE = os.environ.get("MIRROR_SOURCE", "src0")
SOURCE2 = os.environ.get("MIRROR_SOURCE2", "src1")
TARGET_ENI = os.environ.get("MIRROR_TARGET_ENI", "eni-collector")
COLLECTOR_IP = os.environ.get("MIRROR_COLLECTOR_IP", "")
PRIORITY = int(os.environ.get("MIRROR_PRIORITY", "10"))
VNI = int(os.environ.get("MIRROR_VNI", "1000"))
NAME = os.environ.get("MIRROR_NAME", "sdk")
STATE = os.environ.get("MIRROR_STATE", "/tmp/mirror-sdk-state.json")
PHASE = sys.argv[1] if len(sys.argv) > 1 else "setup"


def ok(action, detail=""):
    print(f"OK {action} {detail}".rstrip(), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def typed(value, kind, what):
    """A field the response model declares: present and of its declared type."""
    expect(value is not None, f"{what} is missing")
    expect(isinstance(value, kind) and not (kind is int and isinstance(value, bool)),
           f"{what} is {type(value).__name__} {value!r}, declared {kind.__name__}")
    return value


def wait_for(fetch, done, what, timeout=15.0):
    """Polls `fetch()` until `done(result)`; the agent applies changes in the background."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def save(state):
    with open(STATE, "w") as f:
        json.dump(state, f)


def load():
    with open(STATE) as f:
        return json.load(f)


def expect_error(fn, code, what):
    """Runs fn, which must fail with the SDK's own error carrying `code`."""
    try:
        fn()
    except Exception as e:  # each SDK has its own error type; the code is what matters
        text = f"{type(e).__name__}: {e}"
        for attr in ("code", "error_code", "status"):
            v = getattr(e, attr, None)
            if v is not None:
                text += f" {attr}={v}"
        expect(code in text, f"{what}: expected {code}, got {text}")
        ok(what, code)
        return e
    raise AssertionError(f"{what}: expected {code}, but it succeeded")


# ---- the SDKs' response models: every field present in an answer has its declared type ----
import datetime as _dt  # noqa: E402
import typing as _t  # noqa: E402

_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float),
               "datetime": _dt.datetime, "date": _dt.date}


def _is(value, kind):
    if kind is int and isinstance(value, bool):
        return False
    return isinstance(value, kind)


def _check_declared(value, decl, path):
    """Volcengine's `swagger_types` and Huawei's `openapi_types` spell types as strings."""
    if decl in ("object", "Any"):
        return
    if decl in _PRIMITIVES:
        expect(_is(value, _PRIMITIVES[decl]), f"{path} is {type(value).__name__} {value!r}, declared {decl}")
        return
    if decl.startswith("list["):
        expect(isinstance(value, list), f"{path} is {type(value).__name__}, declared {decl}")
        for i, item in enumerate(value):
            if item is not None:
                _check_declared(item, decl[5:-1], f"{path}[{i}]")
        return
    if decl.startswith("dict("):
        expect(isinstance(value, dict), f"{path} is {type(value).__name__}, declared {decl}")
        return
    expect(type(value).__name__ == decl, f"{path} is {type(value).__name__}, declared {decl}")
    check_model(value, path)


def _check_hint(value, hint, path):
    """The Tea SDK declares its models' field types in their constructors' annotations."""
    if value is None or hint is _t.Any:
        return
    origin = _t.get_origin(hint)
    if origin in (list, _t.List):
        expect(isinstance(value, list), f"{path} is {type(value).__name__}, declared {hint}")
        (item,) = _t.get_args(hint) or (_t.Any,)
        for i, v in enumerate(value):
            _check_hint(v, item, f"{path}[{i}]")
        return
    if origin in (dict, _t.Dict):
        expect(isinstance(value, dict), f"{path} is {type(value).__name__}, declared {hint}")
        return
    if origin is _t.Union:
        return
    if isinstance(hint, type):
        expect(_is(value, hint), f"{path} is {type(value).__name__} {value!r}, declared {hint.__name__}")
        if hasattr(value, "to_map"):
            check_model(value, path)


def check_model(obj, path="answer"):
    """Walks a response model: declared types, and the Tea models' own validate()."""
    decl = getattr(type(obj), "swagger_types", None) or getattr(type(obj), "openapi_types", None)
    if decl is not None:
        for attr, kind in decl.items():
            value = getattr(obj, attr, None)
            if value is not None:
                _check_declared(value, kind, f"{path}.{attr}")
        return
    if hasattr(obj, "to_map") and hasattr(obj, "validate"):
        obj.validate()
        try:
            hints = _t.get_type_hints(type(obj).__init__)
        except Exception:  # a hint the running Python cannot resolve is not the answer's fault
            hints = {}
        for attr, hint in hints.items():
            if attr != "return":
                _check_hint(getattr(obj, attr, None), hint, f"{path}.{attr}")


class Checked:
    """A client whose every answer is checked against its response model."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            answer = attr(*args, **kwargs)
            if answer is not None:
                check_model(answer, name)
            return answer
        return call
