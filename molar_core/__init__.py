"""molar_core: the library behind the molar pipeline (data, models, losses, index, metrics).

It knows nothing of DVC or of params.yaml: stages pass it plain values.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(model_dir, embeddings_dir=None, rebuild=None, added_items=True):
    """A trained model directory (artifacts/NAME) as a Recommender for any history, without retraining:
    `molar_core.load("artifacts/molar").recommend([12, 55, 301], k=10)`, with the items `molar add-items` added
    to it (added_items=False: the trained catalogue alone). See molar_core.recommender.

    Imported on first use, so `import molar_core.<module>` stays free of torch for the modules that need none."""
    from molar_core.recommender import load as load_recommender

    return load_recommender(model_dir, embeddings_dir, rebuild, added_items)
