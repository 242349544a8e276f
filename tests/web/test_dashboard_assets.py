"""The dashboard's shipped assets: the vendored uPlot is the pinned npm release (sha256), its
licence ships beside it, and nothing the pages load names another host."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "edgetwin" / "web" / "static"


def test_vendored_uplot_matches_its_pinned_hashes() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "vendor_web_assets"), "--check"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "uplot@1.6.32" in r.stdout
    assert "MIT" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()


def test_a_changed_vendored_file_is_caught(tmp_path: Path) -> None:
    # the check reads the files it names: run a copy of the script against a tampered copy
    script = (ROOT / "scripts" / "vendor_web_assets").read_text()
    vendor = tmp_path / "edgetwin" / "web" / "static" / "vendor"
    vendor.mkdir(parents=True)
    for f in (STATIC / "vendor").iterdir():
        (vendor / f.name).write_bytes(f.read_bytes())
    (vendor / "uPlot.min.css").write_bytes(b"/* changed */")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "vendor_web_assets").write_text(script)
    r = subprocess.run([sys.executable, str(tmp_path / "scripts" / "vendor_web_assets"),
                        "--check"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert "uPlot.min.css" in r.stderr


def test_our_pages_and_scripts_name_no_other_host() -> None:
    for name in ("dashboard.js", "dashboard.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
    pages = (ROOT / "edgetwin" / "web" / "pages.py").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", pages)
