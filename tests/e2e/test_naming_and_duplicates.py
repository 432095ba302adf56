"""Where files go (naming templates) and one download per Telegram file, through the
HTTP API with every service its own process."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

import pytest
from e2e_stack import Stack

from tgdl.contracts.paths import NameTemplate
from tgdl.simtelegram.content import expected_sha256

pytestmark = pytest.mark.e2e

TEMPLATE = "{chat}/{kind}s/{date:%Y-%m}/{message_id}_{caption:12}_{name}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_batch_with_a_template_puts_every_file_where_it_says(stack: Stack):
    ids = stack.media_ids(4)
    messages = {m.message_id: m for m in stack.sim_messages()}
    r = await stack.http.post("/api/media/batch-download", json={
        "message_ids": ids, "name_template": TEMPLATE})
    assert r.status_code == 200, r.text
    body = await stack.until_finished(r.json()["batch_id"])
    assert body["overall_status"] == "completed", body
    template = NameTemplate.parse(TEMPLATE)
    for f in body["files"]:
        m = messages[f["message_id"]]
        rel = template.render(m.to_entry())
        assert rel.parts[0] == m.chat and rel.parts[2] == m.date.strftime("%Y-%m")
        assert f["download_url"] == f"/media/{rel}"
        path = stack.media_root / rel
        assert Path(f["file_path"]).resolve() == path.resolve()
        assert sha256(path) == expected_sha256(m.message_id, m.size)
        served = await stack.http.get(f["download_url"])
        assert served.status_code == 200 and len(served.content) == m.size
    # the default layout was not used
    assert not (stack.media_root / "photos").exists() and not (stack.media_root / "videos").exists()

    # a second batch with the same template finds them at the rendered paths: nothing to do
    again = await stack.http.post("/api/media/batch-download", json={
        "message_ids": ids, "name_template": TEMPLATE})
    assert sorted(again.json()["already_downloaded"]) == sorted(ids)
    # a template that could give two messages one path is refused, saying why
    bad = await stack.http.post("/api/media/batch-download", json={
        "message_ids": ids, "name_template": "{chat}/{caption}"})
    assert bad.status_code == 422 and "{message_id}" in bad.json()["detail"]
    assert PurePosixPath(f["download_url"]).name.startswith(str(f["message_id"]))
