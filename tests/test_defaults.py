"""One source of model defaults: molar_core's config dataclasses, the params schema and params.yaml agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from molar_core.models.content import ContentConfig
from molar_core.models.molar import MolarLossConfig
from molar_core.models.sasrec import SASRecConfig
from pipeline.params import TrainIdParams, TrainParams

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = {"max_len", "dim", "layers", "heads", "dropout"}
CASES = [  # (params section, its schema, the dataclass, the fields both have)
    ("train_id", TrainIdParams, SASRecConfig, ARCHITECTURE | {"norm"}),
    ("train", TrainParams, ContentConfig,
     ARCHITECTURE | {"norm", "adapter_hidden", "hybrid", "user_encoder", "llm_model", "llm_layers"}),
    ("train", TrainParams, MolarLossConfig,
     {"rec_loss", "num_negatives", "temperature", "align_alpha", "align_tau", "align_positions", "align_head",
      "align_items", "align_same_user_negatives", "joint"}),
]


@pytest.mark.parametrize(("section", "schema", "config", "shared"), CASES,
                         ids=[c[2].__name__ for c in CASES])
def test_schema_params_yaml_and_dataclass_defaults_agree(section, schema, config, shared):
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    assert set(defaults) & set(schema.model_fields) == shared  # every field both know is compared below
    written = yaml.safe_load((REPO / "params.yaml").read_text())[section]
    for key in sorted(shared):
        assert schema.model_fields[key].default == defaults[key], f"{section}.{key}: schema vs {config.__name__}"
        if key in written:
            assert written[key] == defaults[key], f"{section}.{key}: params.yaml vs {config.__name__}"


def test_the_default_pipelines_models_are_the_librarys_defaults():
    """What the training stages build from the schema's defaults is the library's default model: SASRecConfig
    (num_items=N), ContentConfig(num_items=N, input_dim=D) and MolarLossConfig()."""
    from pipeline.configs import content_config, molar_loss_config, sasrec_config

    assert sasrec_config(TrainIdParams(), 7) == SASRecConfig(num_items=7)
    assert content_config(TrainParams(), 7, 5) == ContentConfig(num_items=7, input_dim=5)
    assert molar_loss_config(TrainParams()) == MolarLossConfig()


def test_the_training_catalogue_reaches_the_model_configs():
    """prepare's warm catalogue (train_items) flows into both models' configs: the ids they score in training."""
    from pipeline.configs import content_config, sasrec_config

    assert sasrec_config(TrainIdParams(), 7, 5).catalogue == 5
    assert content_config(TrainParams(), 7, 3, 5).catalogue == 5
