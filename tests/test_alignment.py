"""When post-alignment must matter, and when content must beat ids: synthetic datasets with a known answer.

collaborative: item content is noise, only co-occurrence of ids predicts the next item. SASRec learns it; the
content model cannot; aligning only the user vectors does not transfer it either (the scoring item vectors stay
content-only), while also aligning the item vectors with SASRec's embeddings (`align_items`) does.
content: content is the item's cluster and most items are rarely seen (cold ids): content beats SASRec.
"""

from __future__ import annotations

import pytest
import torch

from molar_core.data.synthetic import generate
from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import Molar, MolarLossConfig
from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss
from molar_core.training import FitConfig, encode_users, fit, ranking_metrics, seed_everything

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
L = 20
FIT = FitConfig(lr=3e-3, batch_size=64, max_epochs=60, patience=5)


def _test_ndcg(user_fn, items, test, scoring=lambda x: x):
    hist, targets = test
    with torch.no_grad():
        users = scoring(encode_users(user_fn, hist, L, CPU))
        return ranking_metrics(users, scoring(items.detach()), hist, targets, [10], True)["ndcg@10"]


def _sasrec(data):
    train, (vh, vt), test = data.leave_one_out()
    gen = seed_everything(0)
    m = SASRec(SASRecConfig(num_items=data.num_items, max_len=L, dim=32, layers=1, heads=1, dropout=0.2,
                            norm="pre"))  # the layout these thresholds were set with
    fit(m, train, lambda b: sasrec_loss(m, b),
        lambda: ranking_metrics(encode_users(m.user_vectors, vh, L, CPU), m.item_vectors().detach(), vh, vt, [10], True),
        FIT, gen)
    m.eval()
    return m, _test_ndcg(m.user_vectors, m.item_vectors(), test)


def _content(data, id_model=None, **loss):
    train, (vh, vt), test = data.leave_one_out()
    gen = seed_everything(0)
    content = ContentUserModel(ContentConfig(num_items=data.num_items, input_dim=data.features.shape[1], max_len=L,
                                             dim=32, layers=1, heads=1, adapter_hidden=64, norm="pre"),
                               torch.from_numpy(data.features))
    m = Molar(content, MolarLossConfig(**loss), id_model)
    fit(m, train, lambda b: m.loss(b, gen),
        lambda: ranking_metrics(m.scoring_form(encode_users(m.user_vectors, vh, L, CPU)),
                                m.scoring_form(m.item_vectors().detach()), vh, vt, [10], True),
        FIT, gen)
    m.eval()
    return _test_ndcg(m.user_vectors, m.item_vectors(), test, m.scoring_form)


def test_item_alignment_carries_collaborative_signal_into_the_content_model(one_torch_thread):
    data = generate("collaborative", users=600, items=300, seed=0)
    sasrec, sasrec_ndcg = _sasrec(data)
    content = _content(data)
    users_only = _content(data, sasrec, align_alpha=0.5)
    molar = _content(data, sasrec, align_alpha=0.5, align_items=True)
    assert sasrec_ndcg > 0.1 and content < 0.05  # the signal is in the ids only
    assert users_only < content + 0.02  # aligning user vectors alone cannot move the scoring item vectors
    assert molar > content + 0.05 and molar > 3 * content


def test_content_beats_ids_when_ids_are_cold(one_torch_thread):
    data = generate("content", users=600, items=3000, seed=0)
    _, sasrec_ndcg = _sasrec(data)
    content = _content(data)
    assert content > 2 * sasrec_ndcg and content - sasrec_ndcg > 0.005
