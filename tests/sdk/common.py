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
