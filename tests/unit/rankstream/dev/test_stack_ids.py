"""Pure pieces of the local stack."""

from __future__ import annotations


def test_cluster_ids_never_look_like_options() -> None:
    from rankstream.dev.stack import _new_cluster_id

    ids = [_new_cluster_id() for _ in range(5000)]  # ~1 in 64 raw ids would start with '-'
    assert all(not i.startswith("-") and len(i) == 22 for i in ids)
    assert len(set(ids)) == len(ids)
