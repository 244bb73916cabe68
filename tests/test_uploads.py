import os

import pytest

from streams.errors import ClipError, ErrorCode
from streams.stages.uploads import UploadStore

ID_A, ID_B = "a" * 24, "b" * 24


def test_uploads_older_than_the_retention_are_removed_and_newer_kept(tmp_path):
    store = UploadStore(tmp_path)
    old, new = store.new(ID_A, "acme", "old.mp4").path, store.new(ID_B, "globex", "new.mp4").path
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1_000, 1_000))
    os.utime(new, (9_000, 9_000))
    assert store.prune(max_age_s=5_000, now=10_000) == 1
    assert not old.exists() and new.exists()


def test_a_missing_store_is_not_an_error(tmp_path):
    assert UploadStore(tmp_path / "absent").prune(max_age_s=1) == 0


def test_an_upload_is_named_by_its_clip_id_and_found_again_by_its_reference(tmp_path):
    store = UploadStore(tmp_path / "uploads")
    upload = store.new(ID_A, "acme", "Front Door.MOV")
    assert upload.uri == f"upload://{ID_A}.mov"
    upload.path.write_bytes(b"clip")
    assert store.path_of(upload.uri, ID_A, "acme") == upload.path
    assert store.new(ID_B, "acme", "clip.exe").uri == f"upload://{ID_B}"  # no foreign suffix


def test_a_reference_is_looked_for_in_the_requesting_tenants_folder_only(tmp_path):
    store = UploadStore(tmp_path)
    upload = store.new(ID_A, "acme", "a.mp4")
    upload.path.write_bytes(b"acme's clip")
    with pytest.raises(ClipError) as caught:
        store.path_of(upload.uri, ID_B, "globex")
    assert caught.value.code == ErrorCode.SOURCE_NOT_FOUND


def test_usage_counts_one_tenants_bytes(tmp_path):
    store = UploadStore(tmp_path)
    store.new(ID_A, "acme", "a.mp4").path.write_bytes(b"x" * 100)
    store.new(ID_B, "globex", "b.mp4").path.write_bytes(b"y" * 7)
    assert (store.usage("acme"), store.usage("globex"), store.usage("initech")) == (100, 7, 0)


@pytest.mark.parametrize(
    "uri",
    ["upload://", "upload://../x.mp4", "upload://a/b", "upload://.k", "upload://a\\b", "file:///x"],
)
def test_a_reference_outside_the_store_is_refused(tmp_path, uri):
    with pytest.raises(ClipError) as caught:
        UploadStore(tmp_path).path_of(uri, "c" * 24, "acme")
    assert caught.value.code == ErrorCode.SOURCE_FORBIDDEN


@pytest.mark.parametrize("tenant", ["..", "../acme", "a/b", "", ".hidden"])
def test_a_tenant_name_is_never_a_path(tmp_path, tenant):
    with pytest.raises(ClipError):
        UploadStore(tmp_path).path_of("upload://x.mp4", "c" * 24, tenant)
