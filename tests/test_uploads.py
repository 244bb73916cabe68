import os

import pytest

from streams.errors import ClipError, ErrorCode
from streams.stages.uploads import UploadStore


def test_uploads_older_than_the_retention_are_removed_and_newer_kept(tmp_path):
    old, new = tmp_path / "old.mp4", tmp_path / "new.mp4"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1_000, 1_000))
    os.utime(new, (9_000, 9_000))
    assert UploadStore(tmp_path).prune(max_age_s=5_000, now=10_000) == 1
    assert not old.exists() and new.exists()


def test_a_missing_store_is_not_an_error(tmp_path):
    assert UploadStore(tmp_path / "absent").prune(max_age_s=1) == 0


def test_an_upload_is_named_by_its_clip_id_and_resolves_back_to_its_file(tmp_path):
    store = UploadStore(tmp_path / "uploads")
    upload = store.new("a" * 24, "Front Door.MOV")
    assert upload.uri == "upload://" + "a" * 24 + ".mov"
    upload.path.write_bytes(b"clip")
    assert store.resolve(upload.uri, "a" * 24) == upload.path.resolve().as_uri()
    assert store.new("b" * 24, "clip.exe").uri == "upload://" + "b" * 24  # no foreign suffix


@pytest.mark.parametrize("uri", ["upload://", "upload://../x.mp4", "upload://a/b", "upload://.k"])
def test_a_reference_outside_the_store_is_refused(tmp_path, uri):
    with pytest.raises(ClipError) as caught:
        UploadStore(tmp_path).resolve(uri, "c" * 24)
    assert caught.value.code == ErrorCode.SOURCE_FORBIDDEN


def test_other_uris_pass_unchanged(tmp_path):
    assert UploadStore(tmp_path).resolve("https://vms/x.mp4", "d" * 24) == "https://vms/x.mp4"
