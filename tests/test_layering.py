"""Dependencies point one way (docs/architecture.md): crypto <- mesh <- node.

crypto/ and mesh/ are pure logic: importing them must not pull in the I/O stack (trio,
httpx, h11, httpcore), and crypto/ imports nothing else of ours. Checked in a fresh
interpreter, since this test process has imported everything already (as trio checks its
own layering in trio/_tests/test_exports.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IO_MODULES = ["h11", "httpcore", "httpx", "trio"]
OURS = ["crypto", "mesh", "node", "simulations"]

# Imports each package and then every module in it, so a module the package's
# __init__ does not import yet is held to the rule too.
CHILD = """
import importlib, json, pkgutil, sys

def loaded(names):
    return sorted({m.split(".")[0] for m in sys.modules} & set(names))

def import_all(name):
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        importlib.import_module(info.name)

io, ours = json.loads(sys.argv[1])
import_all("crypto")
after_crypto = {"io": loaded(io), "ours": loaded(ours)}
import_all("mesh")
after_mesh = {"io": loaded(io), "ours": loaded(ours)}
print(json.dumps({"crypto": after_crypto, "mesh": after_mesh}))
"""


def fresh_interpreter(code: str, *args: str) -> str:
    """What ``code`` prints, run in a fresh interpreter at the repository's root."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_crypto_and_mesh_do_not_import_io_or_upper_layers() -> None:
    loaded = json.loads(fresh_interpreter(CHILD, json.dumps([IO_MODULES, OURS])))
    assert loaded["crypto"] == {"io": [], "ours": ["crypto"]}
    assert loaded["mesh"] == {"io": [], "ours": ["crypto", "mesh"]}


def test_starting_ptth_loads_no_test_tools() -> None:
    # trio.testing imports pytest where it is installed (a tenth of a second at every
    # `ptth` command); only the in-memory networks use it, and import it when they do.
    code = "import sys, node._cli; print(sorted({'pytest', 'trio.testing'} & set(sys.modules)))"
    assert fresh_interpreter(code).strip() == "[]"
