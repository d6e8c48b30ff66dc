"""Checks the sdist and wheel that `python -m build` made in DIR (run by
run-tests.sh): complete metadata, the typed marker, and nothing else but the
package in the wheel.

    python tests/check_dist.py DIR
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path


def main(dist: Path) -> None:
    wheels = list(dist.glob("ldlm-*.whl"))
    sdists = list(dist.glob("ldlm-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"want one wheel and one sdist in {dist}: {list(dist.iterdir())}"
    with zipfile.ZipFile(wheels[0]) as whl:
        names = whl.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(whl.read(meta_name).decode())
    assert "ldlm/py.typed" in names, names
    assert "ldlm/exceptions.py" in names, names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    packages = {n.split("/")[0] for n in names}
    assert packages <= {"ldlm", meta_name.split("/")[0]}, packages
    assert meta["Name"] == "ldlm"
    assert meta["License-Expression"] == "Apache-2.0", meta["License-Expression"]
    assert meta["Requires-Python"] == ">=3.11"
    assert any(r.startswith("nats-py") for r in meta.get_all("Requires-Dist") or [])
    urls = meta.get_all("Project-URL") or []
    assert any(u.startswith("Homepage, https://github.com/ldlm-io/ldlm") for u in urls), urls
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers, classifiers
    assert meta.get_payload().strip().startswith("# ldlm"), "the README is the long description"
    import ldlm

    assert meta["Version"] == ldlm.__version__, (meta["Version"], ldlm.__version__)
    with tarfile.open(sdists[0]) as sd:
        sd_names = sd.getnames()
    assert any(n.endswith("/src/ldlm/py.typed") for n in sd_names), sd_names
    assert any(n.endswith("/pyproject.toml") for n in sd_names), sd_names
    print(f"check_dist: {wheels[0].name} and {sdists[0].name} are complete")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
