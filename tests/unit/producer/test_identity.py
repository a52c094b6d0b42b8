"""run_id and ranks come from the launcher without communication."""

from __future__ import annotations

import pytest

from rankstream.producer.identity import detect_identity, detect_ranks, detect_run_id


def test_torchrun_environment() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "job-42"}
    ident = detect_identity(env=env)
    assert (ident.rank, ident.world_size, ident.local_rank) == (3, 8, 1)
    assert (ident.run_id, ident.source) == ("job-42", "torchelastic")


def test_torchelastic_restart_gets_a_new_run_id_and_static_none_is_ignored() -> None:
    assert detect_run_id({"TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "2"})[0] == "abc-r2"
    rid, source = detect_run_id({"TORCHELASTIC_RUN_ID": "none"})
    assert source == "generated" and rid.startswith("run-")


def test_slurm_job_step_and_restart() -> None:
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "777",
        "SLURM_STEP_ID": "0",
        "SLURM_RESTART_COUNT": "1",
    }
    ident = detect_identity(env=env)
    assert (ident.rank, ident.world_size, ident.local_rank) == (5, 16, 1)
    assert ident.run_id == "slurm-777.0-r1"


def test_mpi_and_defaults() -> None:
    env = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    assert detect_ranks(env) == (2, 4, 0)
    assert detect_ranks({}) == (0, 1, 0)
    assert detect_ranks({"RANK": "9", "WORLD_SIZE": "4"}) == (0, 1, 0)  # inconsistent: ignored


def test_generated_ids_are_unique_and_explicit_arguments_win() -> None:
    a, b = detect_identity(env={}), detect_identity(env={})
    assert a.run_id != b.run_id and a.source == "generated"
    ident = detect_identity("mine", rank=1, world_size=2, env={"RANK": "0", "WORLD_SIZE": "4"})
    assert (ident.run_id, ident.rank, ident.world_size, ident.source) == ("mine", 1, 2, "argument")


def test_without_launcher_id_multi_rank_warns() -> None:
    with pytest.warns(UserWarning, match="run_id"):
        detect_run_id({"RANK": "1", "WORLD_SIZE": "2"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"rank": 2, "world_size": 2}, "out of range"), ({"world_size": 0}, "world_size"), ({"run_id": " "}, "run_id")],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        detect_identity(env={}, **kwargs)
