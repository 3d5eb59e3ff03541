"""Bundles on a bucket (the GCS emulator, gcsfs unpatched): replacing one with force is atomic for readers, a loaded
remote bundle leaves no temporary folder, a remote bundle can be signed and its signature verified on load."""
import gc
import json
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mlprod.bucket import CURRENT
from mlprod.bundle import load_bundle, publish_bundle, sign_bundle
from mlprod.errors import BundleError
from mlprod.signing import Trust, generate_keys
from penguin_bundles import penguin_bundle

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def made():
    "Three local bundles of different versions."
    return [penguin_bundle(r) for r in (10, 20, 30)]


def publish(src: Path, uri: str, force=False):
    "Publish a copy of `src` (publish_bundle moves its folder)."
    import shutil
    tmp = Path(tempfile.mkdtemp()) / src.name
    shutil.copytree(src, tmp)
    return publish_bundle(tmp, uri, force=force)


def test_replacing_a_bucket_bundle_is_atomic_for_readers(gcs, made):
    uri = f"gs://{gcs.bucket()}/models/penguins"
    versions = [load_bundle(p).version for p in made]
    publish(made[0], uri)
    seen, errors, stop = [], [], threading.Event()
    def reader():
        while not stop.is_set():
            try:
                b = load_bundle(uri)
                seen.append(b.version); b.close()
            except Exception as e: errors.append(f"{type(e).__name__}: {e}")
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads: t.start()
    try:
        for src in made[1:] + made[:1] + made[1:]:
            time.sleep(0.2)
            publish(src, uri, force=True)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads: t.join(60)
    assert errors == [] and len(seen) > 10
    assert set(seen) <= set(versions) and len(set(seen)) == 3
    # CURRENT names one folder; the one before is kept for readers that were still downloading it; older ones are gone
    fs = gcs.fs()
    folders = [p.rsplit("/", 1)[1] for p in fs.ls(uri[5:]) if not p.endswith(CURRENT)]
    assert len(folders) == 2 and load_bundle(uri).version == versions[2]
    with pytest.raises(Exception, match="--force"): publish(made[0], uri)


def test_a_bundle_written_before_current_existed_is_replaced_and_removed_a_generation_later(gcs, made):
    fs, bucket = gcs.fs(), gcs.bucket()
    root = f"{bucket}/models/flat"
    for p in sorted(made[0].rglob("*")):  # the layout older mlprod wrote: files at the root, no CURRENT
        if p.is_file(): fs.put_file(str(p), f"{root}/{p.relative_to(made[0]).as_posix()}")
    uri = f"gs://{root}"
    assert load_bundle(uri).version == load_bundle(made[0]).version
    publish(made[1], uri, force=True)
    assert load_bundle(uri).version == load_bundle(made[1]).version and fs.exists(f"{root}/manifest.json")
    publish(made[2], uri, force=True)
    fs.invalidate_cache()
    assert load_bundle(uri).version == load_bundle(made[2]).version and not fs.exists(f"{root}/manifest.json")
    assert not fs.exists(f"{root}/model/model.joblib")


def test_a_loaded_remote_bundle_leaves_no_temporary_folder(gcs, made, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own temporary folder, to count in
    uri = f"gs://{gcs.bucket()}/m"
    publish(made[0], uri)
    b = load_bundle(uri)
    assert b.predict_frame(b.testset().head(3))["prediction"].notna().all()  # lazily unpickles from the copy
    assert len(list(tmp_path.glob("mlprod-bundle-*"))) == 1
    del b; gc.collect()
    assert list(tmp_path.glob("mlprod-bundle-*")) == []
    fs = gcs.fs()
    folder = json.loads(fs.cat_file(f"{uri[5:]}/{CURRENT}"))["path"]
    fs.pipe_file(f"{uri[5:]}/{folder}/metrics.json", b"{}")  # tampered on the bucket
    with pytest.raises(BundleError): load_bundle(uri)
    gc.collect()
    assert list(tmp_path.glob("mlprod-bundle-*")) == []  # a refused download is removed at once


def test_a_bundle_on_a_bucket_is_signed_in_place_and_verified_on_load(gcs, made):
    uri = f"gs://{gcs.bucket()}/signed"
    publish(made[1], uri)
    private, public = generate_keys()
    doc = sign_bundle(uri, private)
    assert load_bundle(uri, trust=Trust.of(public)).signer == doc["key_id"]
    with pytest.raises(BundleError) as e: load_bundle(uri, trust=Trust.of(generate_keys()[1]))
    assert e.value.code == "signature_invalid"
