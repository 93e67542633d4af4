"""Download round trip against a local HTTP server serving small archives built here."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_trees import build_tree, write_image

from nac_lightning.data import get_dataset_class
from nac_lightning.data.download import (
    SOURCES,
    Archive,
    DatasetSource,
    DownloadError,
    dataset_is_complete,
    download_dataset,
    http_download,
    main,
)

TERRA_LOCS = [38, 46, 100, 43]
TERRA_CATS = ["bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit",
              "raccoon", "squirrel"]  # fmt: skip


# ------------------------------------------------------------------------ test archives
def _zip_dir(src: Path, zip_path: Path, prefix: str) -> None:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for f in sorted(src.rglob("*")):
            archive.write(f, f"{prefix}/{f.relative_to(src).as_posix()}")


def _tar_dir(src: Path, tar_path: Path, prefix: str) -> None:
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(src, arcname=prefix)


def _terra_archives(work: Path, out: Path) -> dict:
    """Images + two annotation files in the Caltech Camera Traps (ECCV'18) format."""
    rng = np.random.default_rng(0)
    images_dir = work / "eccv_18_all_images_sm"
    categories = [{"id": i, "name": n} for i, n in enumerate(TERRA_CATS + ["deer", "car"], 1)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations, expected = [], [], []
    k = 0

    def add(location, names):
        nonlocal k
        k += 1
        image_id, file_name = f"img{k}", f"{k:08x}-23d2-11e8.jpg"
        write_image(images_dir / file_name, rng)
        # real files mix int and str locations
        images.append({"id": image_id, "file_name": file_name,
                       "location": location if k % 2 else str(location)})  # fmt: skip
        for name in names:
            annotations.append({"id": f"a{len(annotations)}", "image_id": image_id,
                                "category_id": cat_id[name]})  # fmt: skip
        return file_name

    for loc in TERRA_LOCS:
        for cat in TERRA_CATS:
            expected.append((f"location_{loc}", cat, add(loc, [cat])))
    double = add(43, ["dog", "empty"])
    expected += [("location_43", "dog", double), ("location_43", "empty", double)]
    excluded_loc = add(61, ["bird"])
    excluded_cat = add(38, ["deer"])
    half = len(images) // 2
    ann_dir = work / "eccv_18_annotation_files"
    ann_dir.mkdir(parents=True)
    for name, imgs in (("train_annotations.json", images[:half]),
                       ("cis_val_annotations.json", images[half:])):  # fmt: skip
        ids = {im["id"] for im in imgs}
        anns = [a for a in annotations if a["image_id"] in ids]
        (ann_dir / name).write_text(
            json.dumps(
                {
                    "images": imgs,
                    "annotations": anns,
                    "categories": categories,
                    "info": {"version": "test"},
                }
            )  # fmt: skip
        )
    _tar_dir(images_dir, out / "eccv_18_all_images_sm.tar.gz", "eccv_18_all_images_sm")
    _tar_dir(ann_dir, out / "eccv_18_annotations.tar.gz", "eccv_18_annotation_files")
    return {"expected": expected, "excluded": [excluded_loc, excluded_cat]}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """A folder of archives in the layouts the real sources have."""
    work = tmp_path_factory.mktemp("work")
    out = tmp_path_factory.mktemp("served")
    build_tree(work / "pacs", "pacs", images_per_class=2)
    _zip_dir(work / "pacs" / "PACS", out / "PACS.zip", "kfold")
    build_tree(work / "vlcs", "vlcs", images_per_class=2)
    _tar_dir(work / "vlcs" / "VLCS", out / "VLCS.tar.gz", "VLCS")
    build_tree(work / "oh", "office_home", images_per_class=1)
    (work / "oh" / "office_home" / "ImageInfo.csv").write_text("image,source\n")
    _zip_dir(work / "oh" / "office_home", out / "office_home.zip", "OfficeHomeDataset_10072016")
    terra = _terra_archives(work / "terra", out)
    return {"dir": out, "terra": terra}


# --------------------------------------------------------------------------- the server
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        server = self.server
        rng = self.headers.get("Range")
        server.requests.append((self.path, rng))
        path = server.directory / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        if rng and server.support_range:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = server.cut_after.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(served):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.directory = served["dir"]
    httpd.requests = []
    httpd.cut_after = {}
    httpd.support_range = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


# -------------------------------------------------------------------------------- tests
def test_sources_are_domainbeds():
    from nac_lightning.data import download

    assert download.GDRIVE_URL.format(id="X") == "https://drive.google.com/uc?id=X"  # gdown's
    assert SOURCES["pacs"].archives[0].gdrive_id == "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"
    assert SOURCES["vlcs"].archives[0].gdrive_id == "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"
    assert SOURCES["office_home"].archives[0].gdrive_id == "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"
    urls = [a.url for a in SOURCES["terra_incognita"].archives]
    assert all("caltechcameratraps" in u for u in urls)
    assert [u.rsplit("/", 1)[1] for u in urls] == [
        "eccv_18_all_images_sm.tar.gz",
        "eccv_18_annotations.tar.gz",
    ]


def test_round_trip_all_then_no_op(server, served, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["all", "--root", str(root), "--base-url", server.url]) == 0
    for name in ("pacs", "vlcs", "office_home", "terra_incognita"):
        data = get_dataset_class(name)(root)
        assert data.environments == list(data.ENVIRONMENTS)
        assert dataset_is_complete(name, root)
    assert len(get_dataset_class("pacs")(root).datasets[0]) == 7 * 2
    assert sorted(p.name for p in root.iterdir()) == [
        "PACS",
        "VLCS",
        "office_home",
        "terra_incognita",
    ]  # fmt: skip  (archives deleted, no staging folder left)
    # TerraIncognita sorted by the merged annotations
    terra = root / "terra_incognita"
    for env, cat, file_name in served["terra"]["expected"]:
        assert (terra / env / cat / file_name).is_file()
    n_files = sum(1 for p in terra.rglob("*") if p.is_file())
    assert n_files == len(served["terra"]["expected"])
    assert not (terra / "location_61").exists()
    assert not list(terra.rglob("deer"))
    err = capsys.readouterr().err
    assert "location_43: bird 1, bobcat 1, cat 1, coyote 1, dog 2, empty 2" in err

    # second run: nothing downloaded, nothing changed
    n_requests = len(server.requests)
    assert main(["pacs", "vlcs", "office_home", "terra_incognita", "--root", str(root),
                 "--base-url", server.url]) == 0  # fmt: skip
    assert len(server.requests) == n_requests
    assert capsys.readouterr().err.count("already complete") == 4


def test_resume_partial_download(server, served, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    full = (served["dir"] / "PACS.zip").read_bytes()
    (root / "PACS.zip.part").write_bytes(full[:1000])
    download_dataset("pacs", root, base_url=server.url, progress=False, keep_archives=True)
    assert server.requests == [("/PACS.zip", "bytes=1000-")]
    assert (root / "PACS.zip").read_bytes() == full
    assert not (root / "PACS.zip.part").exists()
    assert dataset_is_complete("pacs", root)


def test_interrupted_download_resumes_on_next_run(server, served, tmp_path):
    root = tmp_path / "data"
    full = (served["dir"] / "VLCS.tar.gz").read_bytes()
    server.cut_after["/VLCS.tar.gz"] = 700
    with pytest.raises(DownloadError, match=r"incomplete.*Run the same command again to resume"):
        download_dataset("vlcs", root, base_url=server.url, progress=False, retries=0)
    assert (root / "VLCS.tar.gz.part").stat().st_size == 700
    assert not (root / "VLCS").exists()
    download_dataset("vlcs", root, base_url=server.url, progress=True, keep_archives=True)
    assert server.requests == [("/VLCS.tar.gz", None), ("/VLCS.tar.gz", "bytes=700-")]
    assert (root / "VLCS.tar.gz").read_bytes() == full
    assert dataset_is_complete("vlcs", root)


def test_interruption_retried_automatically(server, served, tmp_path):
    dest = tmp_path / "a.zip"
    server.cut_after["/office_home.zip"] = 5000
    http_download(f"{server.url}/office_home.zip", dest, progress=False, retries=1)
    assert [r for _, r in server.requests] == [None, "bytes=5000-"]
    assert dest.read_bytes() == (served["dir"] / "office_home.zip").read_bytes()


def test_server_without_range_support_restarts(server, served, tmp_path):
    server.support_range = False
    dest = tmp_path / "PACS.zip"
    (tmp_path / "PACS.zip.part").write_bytes(b"stale bytes")
    http_download(f"{server.url}/PACS.zip", dest, progress=False)
    assert dest.read_bytes() == (served["dir"] / "PACS.zip").read_bytes()


def test_complete_part_file_is_used(server, served, tmp_path):
    full = (served["dir"] / "PACS.zip").read_bytes()
    (tmp_path / "PACS.zip.part").write_bytes(full)
    http_download(f"{server.url}/PACS.zip", tmp_path / "PACS.zip", progress=False)
    assert (tmp_path / "PACS.zip").read_bytes() == full  # server answered 416


def test_corrupt_archive_is_rejected_and_deleted(server, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    good = server.directory / "PACS.zip"
    data = bytearray(good.read_bytes())
    data[len(data) // 3] ^= 0xFF  # flip one byte inside a member's compressed data
    (bad_dir / "PACS.zip").write_bytes(bytes(data))
    (bad_dir / "VLCS.tar.gz").write_bytes((server.directory / "VLCS.tar.gz").read_bytes()[:-300])
    server.directory = bad_dir
    root = tmp_path / "data"
    for name, archive in (("pacs", "PACS.zip"), ("vlcs", "VLCS.tar.gz")):
        with pytest.raises(DownloadError, match=rf"{archive} is corrupt.*run again to re-download"):
            download_dataset(name, root, base_url=server.url, progress=False)
        assert not (root / archive).exists()
        assert not (root / get_dataset_class(name).FOLDER).exists()


def test_checksum_and_wrong_archive_content(server, tmp_path):
    root = tmp_path / "data"
    wrong_md5 = {
        "pacs": DatasetSource("pacs", "PACS", (Archive("PACS.zip", md5="0" * 32),), "kfold")
    }
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_dataset("pacs", root, base_url=server.url, progress=False, sources=wrong_md5)
    wrong_top = {"pacs": DatasetSource("pacs", "PACS", (Archive("PACS.zip"),), "PACS")}
    with pytest.raises(DownloadError, match=r"expected folder 'PACS/' \(found \['kfold'\]\)"):
        download_dataset("pacs", root, base_url=server.url, progress=False, sources=wrong_top)
    assert not (root / "PACS").exists() and not list(root.glob(".nac-download*"))
    # the VLCS archive served as "PACS": extracted, but the layout check refuses it
    as_pacs = {"pacs": DatasetSource("pacs", "PACS", (Archive("VLCS.tar.gz"),), "VLCS")}
    with pytest.raises(DownloadError, match=r"unexpected layout.*found \['Caltech101'"):
        download_dataset("pacs", root, base_url=server.url, progress=False, sources=as_pacs)


def test_existing_incomplete_folder_needs_force(server, tmp_path, make_tree):
    root = make_tree("pacs", images_per_class=1)
    shutil.rmtree(root / "PACS" / "sketch")
    assert not dataset_is_complete("pacs", root)
    with pytest.raises(
        DownloadError, match=r"exists but is incomplete.*missing \['sketch'\].*--force"
    ):
        download_dataset("pacs", root, base_url=server.url, progress=False)
    assert server.requests == []
    download_dataset("pacs", root, base_url=server.url, progress=False, force=True)
    assert dataset_is_complete("pacs", root)
    assert len(get_dataset_class("pacs")(root).datasets[3]) == 14


def test_http_errors_exit_cleanly(server, tmp_path, capsys, monkeypatch):
    server.directory = tmp_path / "empty"
    assert main(["pacs", "--root", str(tmp_path / "d"), "--base-url", server.url]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    monkeypatch.setenv("NAC_DATA_BASE_URL", "http://127.0.0.1:9")  # env var as the mirror
    assert main(["vlcs", "--root", str(tmp_path / "d"), "--no-progress"]) == 1
    assert "cannot reach http://127.0.0.1:9/VLCS.tar.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rotated_digits", "--root", str(tmp_path)])
    with pytest.raises(DownloadError, match="rotated_digits is embedded"):
        download_dataset("rotated_digits", tmp_path)


def test_module_entry_point_is_a_no_op_on_complete_data(make_tree):
    root = make_tree("vlcs", images_per_class=1)
    result = subprocess.run(
        [sys.executable, "-m", "nac_lightning.data.download", "vlcs", "--root", str(root)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "vlcs: already complete" in result.stderr


def test_google_drive_archives_go_through_gdown(server, served, tmp_path, monkeypatch):
    """PACS without --base-url: the archive is fetched by gdown itself (its real code path),
    pointed at the local server instead of drive.google.com."""
    from nac_lightning.data import download

    (served["dir"] / "drive").mkdir(exist_ok=True)
    shutil.copy(
        served["dir"] / "PACS.zip", served["dir"] / "drive" / SOURCES["pacs"].archives[0].gdrive_id
    )
    monkeypatch.setattr(download, "GDRIVE_URL", server.url + "/drive/{id}")
    root = tmp_path / "data"
    assert main(["pacs", "--root", str(root)]) == 0
    assert dataset_is_complete("pacs", root)
    assert any(
        path.startswith("/drive/1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd") for path, _ in server.requests
    )
    # a Drive failure (here a 404) is one clear error with the way out
    monkeypatch.setattr(download, "GDRIVE_URL", server.url + "/missing/{id}")
    with pytest.raises(DownloadError, match="gdown could not fetch VLCS.tar.gz"):
        download_dataset("vlcs", tmp_path / "other", progress=False)
