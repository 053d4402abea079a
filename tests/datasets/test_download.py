"""Download machinery against a local HTTP server on 127.0.0.1 (no network): Range
resume of a truncated .part, dropped connections, checksum mismatch, idempotent second
call, archive extraction, per-image crawls, manual corpora, the CLI."""
from __future__ import annotations

import hashlib
import io
import json
import socket
import urllib.error
import zipfile
from pathlib import Path

import pytest

from fixtures import real_formats as rf
from http_server import Server
from lavislike.datasets.download import (
    Checksums,
    ManualDownloadRequired,
    annotations_from_img2dataset,
    available,
    download,
    download_main,
    extract,
    fetch,
)
from lavislike.common import fetch as fetch_module
from lavislike.datasets.download import core, sources
from lavislike.errors import ConfigError, DataError

PAYLOAD = bytes(range(256)) * 400  # 102400 bytes


@pytest.fixture
def server():
    srv = Server()
    srv.files["/data.bin"] = PAYLOAD
    yield srv
    srv.close()


def test_fetch_verifies_and_second_call_is_idempotent(server, tmp_path):
    dest = tmp_path / "a" / "data.bin"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    fetch(server.url("/data.bin"), dest, Checksums(sha256=sha))
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()
    n = len(server.requests)
    fetch(server.url("/data.bin"), dest, Checksums(sha256=sha))
    assert len(server.requests) == n  # present and verified: no request at all


def test_fetch_resumes_truncated_part_with_range(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD[:30000])
    fetch(server.url("/data.bin"), dest, Checksums(md5=hashlib.md5(PAYLOAD).hexdigest()))
    assert server.requests == [("/data.bin", "bytes=30000-")]
    assert dest.read_bytes() == PAYLOAD


def test_fetch_reconnects_after_dropped_connection(server, tmp_path):
    server.drop_after["/data.bin"] = 50000
    dest = tmp_path / "data.bin"
    fetch(server.url("/data.bin"), dest, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", None), ("/data.bin", "bytes=50000-")]
    # no published checksum: the size was recorded and is checked from now on
    record = json.loads(dest.with_name(".data.bin.download.json").read_text())
    assert record["size"] == len(PAYLOAD) and record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()


def test_fetch_checksum_mismatch_raises_and_deletes_part(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError, match=r"corrupt: md5 .*expected 0{32}"):
        fetch(server.url("/data.bin"), dest, Checksums(md5="0" * 32))
    assert not dest.exists() and not dest.with_name("data.bin.part").exists()


def test_fetch_refetches_file_that_no_longer_matches_record(server, tmp_path):
    dest = tmp_path / "data.bin"
    fetch(server.url("/data.bin"), dest)
    dest.write_bytes(PAYLOAD[:10])  # truncated on disk later
    fetch(server.url("/data.bin"), dest)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_http_error_is_one_line_data_error(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(server.url("/nope.json"), tmp_path / "x.json")


@pytest.mark.parametrize("errno, text, opens", [(socket.EAI_NONAME, "Name or service not known", 1),
                                               (socket.EAI_AGAIN, "Temporary failure in name resolution", 3)])
def test_fetch_unknown_host_fails_at_once_and_says_where_the_file_goes(tmp_path, monkeypatch, errno, text, opens):
    """Offline (or a wrong host): the resolver's "no such name" is final, one line naming the
    file's place, no retries and no waits; "try again later" is retried as a dropped link."""
    calls, sleeps = [], []

    def unresolved(url, offset, timeout):
        calls.append(url)
        raise urllib.error.URLError(socket.gaierror(errno, text))

    monkeypatch.setattr(fetch_module, "_open", unresolved)
    monkeypatch.setattr(fetch_module.time, "sleep", sleeps.append)
    dest = tmp_path / "weights" / "model.pth"
    with pytest.raises(DataError) as info:
        fetch("https://weights.example/model.pth", dest, retries=2)
    message = str(info.value)
    assert len(calls) == opens and "\n" not in message and str(dest) in message
    if errno == socket.EAI_NONAME:
        assert "does not resolve" in message and sleeps == []
    else:
        assert "after 2 retries" in message and len(sleeps) == 2


def test_extract_zip_with_subdir_is_idempotent_and_safe(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("MSRVTT/videos/all/video0.mp4", b"v0")
        zf.writestr("MSRVTT/annotation/x.json", b"{}")
    arc = tmp_path / "MSRVTT.zip"
    arc.write_bytes(buf.getvalue())
    out = extract(arc, tmp_path / "videos", subdir="MSRVTT/videos/all")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["video0.mp4"]
    (out / "video0.mp4").unlink()
    extract(arc, tmp_path / "videos", subdir="MSRVTT/videos/all")  # marker: not redone
    assert not (out / "video0.mp4").exists()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", b"x")
    with pytest.raises(DataError, match="outside the target folder"):
        extract(evil, tmp_path / "safe")


@pytest.fixture
def local_corpus(server, tmp_path, monkeypatch):
    """A corpus table entry whose annotation YAML and image archive point at the server."""
    ann = json.dumps([{"image": "imgs/a.jpg", "caption": "a cat"}]).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("imgs/a.jpg", b"jpeg bytes")
    server.files["/ann.json"] = ann
    server.files["/imgs.zip"] = buf.getvalue()
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "toy.yaml").write_text(
        "datasets:\n  toy:\n    build_info:\n      annotations:\n        train:\n"
        f"          url: {server.url('/ann.json')}\n"
        f"          md5: {hashlib.md5(ann).hexdigest()}\n"
        "          storage: toy/annotations/train.json\n"
        "      images: {storage: toy/images}\n"
    )
    entry = sources.Corpus("toy", "toy.yaml", (
        sources.Resource("images", server.url("/imgs.zip"), "toy/download/imgs.zip", extract_to="toy/images"),))
    monkeypatch.setitem(sources.CORPORA, "toy", entry)
    monkeypatch.setattr(sources, "CONFIG_DIR", cfg_dir)
    monkeypatch.setattr(core, "annotation_resources", lambda name: sources.annotation_resources(name, cfg_dir))
    return tmp_path / "root"


def test_download_fetches_extracts_and_is_idempotent(server, local_corpus):
    report = download("toy", root=local_corpus)
    root = local_corpus
    assert json.loads((root / "toy/annotations/train.json").read_text())[0]["caption"] == "a cat"
    assert (root / "toy/images/imgs/a.jpg").read_bytes() == b"jpeg bytes"
    assert not (root / "toy/download/imgs.zip").exists()  # archive removed after extraction
    assert len(report.fetched) == 2
    n = len(server.requests)
    again = download("toy", root=root)
    assert len(server.requests) == n and not again.fetched and len(again.skipped) == 2


def test_download_only_annotations_and_bad_arguments(server, local_corpus):
    download("toy", root=local_corpus, what=["annotations"], splits=["train"])
    assert not (local_corpus / "toy/images").exists()
    with pytest.raises(ConfigError, match="unknown split 'tran'.*Did you mean 'train'"):
        download("toy", root=local_corpus, splits=["tran"])
    with pytest.raises(ConfigError, match="no download recipe for dataset 'coco_captoin'.*coco_caption"):
        download("coco_captoin")


def test_crawl_downloads_each_listed_image(server, tmp_path, monkeypatch):
    server.files["/index.json"] = json.dumps({"images": [
        {"file_name": "a.jpg", "coco_url": server.url("/img/a.jpg")},
        {"file_name": "b.jpg", "coco_url": server.url("/img/b.jpg")},
    ]}).encode()
    server.files["/img/a.jpg"] = b"A"
    server.files["/img/b.jpg"] = b"B"
    entry = sources.Corpus("crawl", "none.yaml", (
        sources.UrlList("images", server.url("/index.json"), "c/index.json", "c/images/val", ("val",)),))
    monkeypatch.setitem(sources.CORPORA, "crawl", entry)
    report = download("crawl", root=tmp_path, what=["images"])
    assert (tmp_path / "c/images/val/b.jpg").read_bytes() == b"B" and len(report.fetched) == 2
    del server.files["/img/a.jpg"]
    (tmp_path / "c/images/val/a.jpg").unlink()
    with pytest.raises(DataError, match="1 of 2 files .* run the same command again"):
        download("crawl", root=tmp_path, what=["images"])


def test_manual_corpus_raises_with_exact_steps(tmp_path):
    with pytest.raises(ManualDownloadRequired) as info:
        download("conceptual_caption_3m", root=tmp_path, what=["images"])
    assert "dataset_card/conceptual_caption_3m.md" in str(info.value)
    assert "img2dataset --url_list Train_GCC-training.tsv" in info.value.steps
    assert str(tmp_path / "conceptual_caption/images") in info.value.steps


def test_table_matches_builder_yamls_and_cards():
    repo = Path(__file__).resolve().parents[2]
    table = available()
    for name, info in table.items():
        assert info["annotations"] != "missing config", name
        assert (repo / info["card"]).is_file(), info["card"]
    assert table["coco_caption"] == {"annotations": "automatic", "media": "automatic",
                                     "card": "dataset_card/coco_caption.md"}
    assert table["laion"]["media"] == "manual" and table["nocaps"]["media"] == "crawl"
    coco = {r.storage: r for r in sources.annotation_resources("coco_caption")}
    assert coco["coco/annotations/coco_karpathy_train.json"].md5 == "aa31ac474cf6250ebb81d18348a07ed8"
    assert coco["coco_gt/coco_karpathy_val_gt.json"].md5 is None
    vqa_val = [r.storage for r in sources.annotation_resources("coco_vqa") if r.splits == ("val",)]
    assert vqa_val[2].endswith("questions.json") and vqa_val[3].endswith("annotations.json")


def test_img2dataset_folder_to_annotations(tmp_path):
    rf.write_img2dataset_folder(tmp_path / "crawl", ["first caption", "second caption"])
    n = annotations_from_img2dataset(tmp_path / "crawl", tmp_path / "ann.json")
    rows = json.loads((tmp_path / "ann.json").read_text())
    assert n == 2 and rows[0] == {"image": "00000/000000000.jpg", "caption": "first caption",
                                  "url": "https://example.com/0.jpg"}


def test_cli_list_how_and_errors(capsys, tmp_path):
    assert download_main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "coco_vqa" in listing and "laion" in listing
    assert download_main(["laion", "--how"]) == 0
    assert "img2dataset" in capsys.readouterr().out
    assert download_main(["flickr30k", "--what", "images", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "shannon.cs.illinois.edu" in err
    assert download_main(["nocap"]) == 2
    assert "Did you mean 'nocaps'" in capsys.readouterr().err
