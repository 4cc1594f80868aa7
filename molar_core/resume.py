"""Per-epoch training state on disk, so a killed training run resumes at its next epoch with the same result.

One safetensors file holds everything a bit-identical continuation needs: model and best-so-far weights, the
AdamW moments, the moving average of the weights (`ema_decay`), the torch and sampling-generator RNG states, and
(as JSON metadata) the epoch, the curve, the early-stopping counters and the LR schedule position. It is replaced
atomically after every epoch, and it carries a fingerprint of the run's params and data: state from other params
or data is ignored and replaced, never resumed. No pickle: only tensors and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from molar_core.io import parse_safetensors_metadata
from molar_core.vectors import save_tensors

STATE_FILE = "state.safetensors"


@dataclass
class EpochState:
    """What the loop needs besides tensors already restored into the model, optimiser and generator."""

    epoch: int
    curve: list[dict]
    best: float
    best_epoch: int
    stale: int
    finished: bool
    seconds: float
    best_state: dict[str, torch.Tensor] | None
    average: dict[str, torch.Tensor] | None = None  # molar_core.training.WeightAverage's state


class TrainingResume:
    def __init__(self, directory: str | Path, fingerprint: str):
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        self.resumed_from: int | None = None  # epoch the current run continued after (None: fresh start)

    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched, generator: torch.Generator,
             state: EpochState) -> None:
        tensors = {f"model.{k}": v.detach() for k, v in model.state_dict().items()}
        if state.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in state.best_state.items()})
        if state.average is not None:
            tensors.update({f"average.{k}": v for k, v in state.average.items()})
        opt_state = opt.state_dict()
        for pid, slots in opt_state["state"].items():
            for name, value in slots.items():
                tensors[f"opt.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = generator.get_state()
        meta = {"fingerprint": self.fingerprint, "epoch": state.epoch, "curve": state.curve, "best": state.best,
                "best_epoch": state.best_epoch, "stale": state.stale, "finished": state.finished,
                "seconds": state.seconds, "scheduler": sched.state_dict(), "param_groups": opt_state["param_groups"],
                "has_best": state.best_state is not None, "has_average": state.average is not None}
        save_tensors(self.path, tensors, meta)

    def load(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched,
             generator: torch.Generator) -> EpochState | None:
        """Restore a matching saved state into model, optimiser, scheduler and RNGs; None to start fresh."""
        if not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = parse_safetensors_metadata(f.metadata())
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  safe_open has no __iter__
        except (SafetensorError, OSError, ValueError):
            return None  # unreadable: start over (it is replaced after the first epoch)
        if meta.get("fingerprint") != self.fingerprint:
            return None
        device = next(model.parameters()).device
        model.load_state_dict({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")})
        opt_state: dict = {"state": {}, "param_groups": meta["param_groups"]}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                opt_state["state"].setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
        opt.load_state_dict(opt_state)
        sched.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        generator.set_state(tensors["rng.generator"])
        best_state = ({k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
                      if meta["has_best"] else None)
        average = ({k[8:]: v.to(device) for k, v in tensors.items() if k.startswith("average.")}
                   if meta.get("has_average") else None)
        self.resumed_from = int(meta["epoch"])
        return EpochState(int(meta["epoch"]), meta["curve"], float(meta["best"]), int(meta["best_epoch"]),
                          int(meta["stale"]), bool(meta["finished"]), float(meta["seconds"]), best_state, average)

    def clear(self) -> None:
        """The run finished and its outputs are written: the state is no longer needed."""
        self.path.unlink(missing_ok=True)
        if self.dir.exists() and not any(self.dir.iterdir()):
            self.dir.rmdir()
