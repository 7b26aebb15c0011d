"""The web app's assets as the API serves them: the vendored hls.js is the npm version pinned.

``make webapp`` installs hls.js with ``npm ci`` from ``webapp/package-lock.json`` and copies it into
``api/static/vendor/``; the copy is committed (and packaged), so a ``pip install`` without npm serves
the same file. These tests catch a pin changed without a rebuild, a rebuild not committed, and
assets missing from the package data.
"""

from __future__ import annotations

import glob
import json
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings

ROOT = Path(__file__).resolve().parent.parent
WEBAPP = ROOT / "webapp"
STATIC = ROOT / "api" / "static"
KEY = "test-key-0123456789"
HLS_PATH = "/static/vendor/hls.min.js"


def pinned_hls_version() -> str:
    lock = json.loads((WEBAPP / "package-lock.json").read_text())
    declared = json.loads((WEBAPP / "package.json").read_text())["dependencies"]["hls.js"]
    locked = lock["packages"]["node_modules/hls.js"]["version"]
    # An exact pin: a range would let `npm install` pick another version than the one committed.
    assert declared == locked, (declared, locked)
    return locked


@pytest.fixture(scope="module")
def client() -> TestClient:
    # No lifespan (no Kafka): static files and the page are served without it.
    return TestClient(create_app(ApiSettings(keys=KEY)))


def test_served_hls_js_is_the_pinned_npm_version(client: TestClient) -> None:
    version = pinned_hls_version()
    response = client.get(HLS_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    # hls.js carries its version as a string literal (``Hls.version``).
    assert f'"{version}"' in response.text
    assert client.get("/static/vendor/versions.json").json() == {"hls.js": version}
    assert "Apache License" in client.get("/static/vendor/hls.js.LICENSE").text
    installed = WEBAPP / "node_modules" / "hls.js"
    if installed.is_dir():  # after `make webapp` (every `make test`): byte for byte npm's build
        assert json.loads((installed / "package.json").read_text())["version"] == version
        assert response.content == (installed / "dist" / "hls.min.js").read_bytes()


def test_the_page_loads_only_its_own_assets(client: TestClient) -> None:
    page = client.get("/").text
    # What the page loads (scripts, styles, icon), not where its links lead.
    scripts = re.findall(r'<script[^>]* src="([^"]+)"', page)
    referenced = scripts + re.findall(r'<link[^>]* href="([^"]+)"', page)
    assert HLS_PATH in referenced
    for url in referenced:
        # Nothing from another origin (no CDN): every asset is served by the API itself.
        assert url.startswith("/static/") or url.startswith("data:"), url
        if url.startswith("/static/"):
            assert client.get(url).status_code == 200, url
    modules = sorted(path.name for path in (STATIC / "js").glob("*.js"))
    assert modules, "no JS modules"
    for name in modules:
        source = client.get(f"/static/js/{name}")
        assert source.status_code == 200, name
        # Imports between modules are absolute /static paths (the page is also served at
        # /events/<stream_id>/<session_id>, where relative URLs would resolve elsewhere).
        for target in re.findall(r'from\s+"([^"]+)"', source.text):
            assert target.startswith("/static/js/"), (name, target)
            assert client.get(target).status_code == 200, (name, target)


def test_the_package_data_ships_the_static_subfolders() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["api"]
    # setuptools expands package-data patterns with glob(recursive=True) in the package folder.
    shipped = {
        Path(name).as_posix()
        for pattern in patterns
        for name in glob.glob(pattern, root_dir=ROOT / "api", recursive=True)
    }
    static_files = {p.relative_to(ROOT / "api").as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert {"static/index.html", "static/vendor/hls.min.js", "static/vendor/hls.js.LICENSE"} <= static_files
    assert static_files <= shipped, sorted(static_files - shipped)
