import os

from api.uploads import prune_uploads


def test_uploads_older_than_the_retention_are_removed_and_newer_kept(tmp_path):
    old, new = tmp_path / "old.mp4", tmp_path / "new.mp4"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1_000, 1_000))
    os.utime(new, (9_000, 9_000))
    assert prune_uploads(tmp_path, max_age_s=5_000, now=10_000) == 1
    assert not old.exists() and new.exists()


def test_a_missing_store_is_not_an_error(tmp_path):
    assert prune_uploads(tmp_path / "absent", max_age_s=1) == 0
