"""Training windows with a random phase (`window_phase: random`): each epoch's cut trains every next-item pair
once, keeps the newest window, moves the older boundaries, and a resumed run draws the same cuts."""

from __future__ import annotations

import pytest
import torch

from molar_core.data.sequences import EpochWindows, Window, row_users, training_windows
from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss
from molar_core.resume import TrainingResume
from molar_core.training import FitConfig, fit, seed_everything
from pipeline.params import TrainIdParams, TrainParams
from stages.common import training_sequences

SEQS = [list(range(1, 131)), list(range(200, 229)), [7, 8], list(range(300, 310))]


def _pairs(windows) -> list[tuple[int, int]]:
    """Every (input item, target) pair a cut trains: targets after the window's context-only part."""
    return sorted((w[i - 1], w[i]) for w in windows for i in range(1 + w.context_only, len(w)))


@pytest.mark.parametrize("overlap", [0, 3])
def test_every_cut_trains_every_pair_once_and_keeps_the_newest_window(overlap):
    want = sorted((s[i - 1], s[i]) for s in SEQS for i in range(1, len(s)))
    fixed = training_windows(SEQS, 10, overlap)
    assert _pairs(fixed) == want
    gen = torch.Generator().manual_seed(0)
    cuts = [training_windows(SEQS, 10, overlap, generator=gen) for _ in range(6)]
    for cut in cuts:
        assert _pairs(cut) == want
        assert all(len(w) <= 11 for w in cut)
        assert list(cut[0]) == list(fixed[0]) == SEQS[0][-11:]  # the newest window never moves
    # the older boundaries of the long history move from cut to cut (without a phase they never do)
    starts = {tuple(w[0] for w in cut if w[-1] <= 130) for cut in cuts}
    assert len(starts) > 1
    # short histories (one window) are the same in every cut
    assert all([list(w) for w in cut if w[0] >= 300] == [SEQS[3]] for cut in cuts)


@pytest.mark.parametrize("overlap", [0, 3])
@pytest.mark.parametrize("phase", [False, True])
def test_every_window_carries_the_user_it_was_cut_from(overlap, phase):
    """`Window.user` is the index of the history each window is a slice of, in every kind of cut."""
    gen = torch.Generator().manual_seed(1) if phase else None
    cuts = [training_windows(SEQS, 10, overlap, generator=gen) for _ in range(3)]
    cuts.append(training_windows(SEQS, 10, overlap, newest_only=True, generator=gen))
    cuts.append(EpochWindows(SEQS, 10, overlap)(gen))
    for cut in cuts:
        for w in cut:
            s, n = SEQS[w.user], len(w)
            assert any(s[i:i + n] == list(w) for i in range(len(s) - n + 1))
        assert sorted({w.user for w in cut}) == [0, 1, 2, 3]
    assert sum(w.user == 0 for w in cuts[0]) > 1  # the 130-item history gives several windows of user 0
    # a batch's users: plain lists and windows without one are users of their own
    batch = [cuts[0][0], [1, 2], cuts[0][1], Window([3, 4]), [5, 6]]
    assert row_users(batch).tolist() == [0, -2, 0, -4, -5]


def test_cuts_depend_only_on_the_generator_state():
    a = [training_windows(SEQS, 10, generator=g) for g in [torch.Generator().manual_seed(5)] * 3]
    b = [training_windows(SEQS, 10, generator=g) for g in [torch.Generator().manual_seed(5)] * 3]
    assert [[list(w) for w in c] for c in a] == [[list(w) for w in c] for c in b]


def test_epoch_windows_size_is_the_fixed_cut_and_none_gives_it():
    ew = EpochWindows(SEQS, 10)
    assert len(ew) == len(training_windows(SEQS, 10))
    assert [list(w) for w in ew(None)] == [list(w) for w in training_windows(SEQS, 10)]


def test_params_choose_the_cut():
    assert isinstance(training_sequences(SEQS, TrainIdParams(max_len=10)), EpochWindows)  # SASRec's default
    assert isinstance(training_sequences(SEQS, TrainIdParams(max_len=10, window_phase="fixed")), list)
    assert isinstance(training_sequences(SEQS, TrainParams(max_len=10)), list)  # the content model's default
    with pytest.raises(ValueError, match="window_phase"):
        TrainIdParams(window_phase="sometimes")


def _run(resume=None, stop_after=None, seen=None):
    gen = seed_everything(0)
    model = SASRec(SASRecConfig(num_items=330, max_len=10, dim=16, layers=1, heads=2, dropout=0.1))
    epoch = {"n": 0}

    def windows(g):
        cut = EpochWindows(SEQS, 10)(g)
        if g is not None:
            epoch["n"] += 1
            if stop_after is not None and epoch["n"] == stop_after:
                raise KeyboardInterrupt  # killed at the start of this epoch
            if seen is not None:
                seen.append(tuple(w[0] for w in cut))
        return cut

    result = fit(model, windows, lambda b: sasrec_loss(model, b), None,
                 FitConfig(max_epochs=4, batch_size=2, lr=1e-2), gen, resume=resume)
    return model, result


def test_fit_draws_a_new_cut_each_epoch_and_a_resumed_run_draws_the_same_cuts(tmp_path):
    seen: list = []
    whole, _ = _run(seen=seen)
    assert len(seen) == 4 and len(set(seen)) > 1
    with pytest.raises(KeyboardInterrupt):
        _run(resume=TrainingResume(tmp_path, "fp"), stop_after=3)
    resumed, result = _run(resume=TrainingResume(tmp_path, "fp"))
    assert [r["epoch"] for r in result.curve] == [1, 2, 3, 4]
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)
