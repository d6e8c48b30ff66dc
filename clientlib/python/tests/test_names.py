"""Lock names: the '~' + base64url rule of docs/protocol.md, checked against
the Go implementation (subjects.EncodeName) and end to end."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

import ldlm
from ldlm._names import subject

from conftest import REPO_ROOT

# docs/protocol.md's table, and more
CASES = {
    "job": "job",
    "orders.123": "orders.123",
    "My lock": "~TXkgbG9jaw",
    "a*b": "~YSpi",
    "a>b": "~YT5i",
    "é": "~w6k",
    "~x": "~fng",
    "a~b": "a~b",
    "a..b": "~YS4uYg",
    ".a": "~LmE",
    "a.": "~YS4",
    "": "~",
    "tab\there": "~dGFiCWhlcmU",
    "del\x7f": "~ZGVsfw",
    "!\"#$%&'()+,-/:;<=?@[\\]^_`{|}~": "!\"#$%&'()+,-/:;<=?@[\\]^_`{|}~",
    "\u2603 snow": "~4piDIHNub3c",
}


@pytest.mark.parametrize("name,encoded", sorted(CASES.items()))
def test_encode_name(name, encoded):
    assert ldlm.encode_name(name) == encoded
    if name:
        assert ldlm.decode_name(encoded) == name


def test_subject():
    assert subject("ldlm", "lock", "My lock") == "ldlm.lock.~TXkgbG9jaw"
    assert subject("ldlm", "unlock", "orders.123") == "ldlm.unlock.orders.123"


def test_name_must_be_str():
    with pytest.raises(TypeError):
        ldlm.encode_name(b"job")  # type: ignore[arg-type]


GO_ENCODER = """package main

import (
	"encoding/json"
	"os"

	"github.com/ldlm-io/ldlm/subjects"
)

func main() {
	var names []string
	if err := json.NewDecoder(os.Stdin).Decode(&names); err != nil {
		panic(err)
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = subjects.EncodeName(n)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def test_same_as_go(tmp_path):
    go = shutil.which("go")
    if go is None or not (REPO_ROOT / "subjects" / "names.go").is_file():
        pytest.skip("needs go and the repository's subjects package")
    rng = random.Random(7)
    alphabet = "ab.~*> \t\x7fé\u2603-_=/+" + "".join(chr(c) for c in range(0x21, 0x7F))
    names = list(CASES) + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(500)
    ]
    src = tmp_path / "encode.go"
    src.write_text(GO_ENCODER)
    res = subprocess.run(
        [go, "run", str(src)],
        cwd=REPO_ROOT,
        input=json.dumps(names),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [ldlm.encode_name(n) for n in names]


@pytest.mark.parametrize("lock_name", ["My lock", "é", "a..b", "~x", "a*b", "orders.123", "x" * 1000])
def test_any_name_locks(client, lock_name):
    lock = client.try_lock(lock_name)
    assert lock
    assert lock.name == lock_name
    assert not client.try_lock(lock_name)
    assert lock.unlock()
    assert client.try_lock(lock_name).unlock()


def test_names_are_distinct(client):
    # "~x" and the name whose encoding is "~x"'s text are different locks
    a = client.try_lock("~fng")
    b = client.try_lock("~x")
    assert a and b
    a.unlock()
    b.unlock()


def test_invalid_names(client):
    with pytest.raises(ldlm.InvalidLockNameError):
        client.try_lock("")
    with pytest.raises(ldlm.InvalidLockNameError):
        client.try_lock("x" * 1025)
