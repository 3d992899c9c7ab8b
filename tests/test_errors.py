"""One error path for people (core.errors): every error that says what to do is a UserError, and
one runner turns it into one screen and an exit code for every entry point."""

import errno

import pytest

from core import errors


def user_error_classes():
    from core.datasets.common import DatasetError
    from core.datasets.folder import FolderDatasetError
    from core.datasets.gobjaverse import GobjaverseError
    from core.datasets.shards import ShardsError
    from core.generation import GenerationError
    from core.gs import RendererError
    from core.images import ImageReadError
    from core.mesh import MeshError
    from core.metrics import LPIPSUnavailableError
    from core.mvdiffusion.pipeline import NonFiniteViewsError
    from core.options import OptionsError
    from core.outputs import OutputError, WorkspaceInUseError
    from core.training import CheckpointError, NoCheckpointError, WorkspaceUsedError
    from core.weights import WeightsError, WeightsMismatchError, WeightsNotFoundError

    return [DatasetError, FolderDatasetError, GobjaverseError, ShardsError, GenerationError, RendererError, ImageReadError,
            MeshError, LPIPSUnavailableError, NonFiniteViewsError, OptionsError, OutputError, WorkspaceInUseError,
            CheckpointError, NoCheckpointError, WorkspaceUsedError, WeightsError, WeightsMismatchError, WeightsNotFoundError]


def test_every_error_for_people_shares_the_base():
    assert all(issubclass(c, errors.UserError) for c in user_error_classes())
    from core.training import CheckpointError

    assert CheckpointError.exit_code == 1  # the run failed; its work up to the last checkpoint is safe
    assert {c.exit_code for c in user_error_classes() if c is not CheckpointError} == {2}


def test_the_runner_shows_one_screen_and_returns_the_exit_code(capsys):
    from core.training import CheckpointError
    from core.weights import WeightsNotFoundError

    def fail(e):
        def entry():
            raise e
        return entry

    assert errors.run(lambda: 0, "x.py") == 0
    assert errors.run(fail(WeightsNotFoundError("weights missing\nfetch them with Y")), "x.py") == 2
    err = capsys.readouterr().err
    assert "x.py: error: weights missing\nfetch them with Y" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 4  # rule, two lines of message, rule
    assert errors.run(fail(CheckpointError("could not save")), "x.py") == 1
    full = OSError(errno.ENOSPC, "No space left on device", "/ws/train_log.jsonl")
    assert errors.run(fail(full), "x.py", disk_full_note=lambda: "checkpoint step_5 is intact") == 1
    assert "/ws/train_log.jsonl: no space left on the device. checkpoint step_5 is intact" in capsys.readouterr().err
    assert errors.run(fail(KeyboardInterrupt()), "x.py", interrupt_note="saved") == 130
    with pytest.raises(ZeroDivisionError):  # a bug is a traceback, not a message
        errors.run(fail(ZeroDivisionError()), "x.py")
    with pytest.raises(PermissionError):
        errors.run(fail(PermissionError(errno.EACCES, "denied")), "x.py")
