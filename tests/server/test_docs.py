"""The README's API reference names only endpoints that exist, and every endpoint is documented."""

from __future__ import annotations

import re

from server.app import create_app
from server.gateway import Gateway
from tests.conftest import ROOT, make_config


def routes() -> set[tuple[str, str]]:
    app = create_app(Gateway(make_config()))
    return {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }


def test_every_path_in_the_readme_exists():
    readme = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"localhost:8080(/[a-z0-9/\-]*)", readme)) - {"/"}
    known = {path for _, path in routes()}
    assert paths, "the README shows no example URLs"
    # A path is an endpoint, or a base URL some endpoints live under (`/v1`).
    unknown = {p for p in paths if not any(k == p or k.startswith(p + "/") for k in known)}
    assert not unknown, f"documented but not served: {unknown}"


def test_every_endpoint_has_a_readme_heading_or_example():
    readme = (ROOT / "README.md").read_text()
    missing = sorted(
        (method, path) for method, path in routes() if f"{method} {path}" not in readme
    )
    assert not missing, f"endpoints the README does not name as 'METHOD /path': {missing}"
