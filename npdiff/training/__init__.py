"""Training: the DDPM trainer, its typed config and exactly-resumable checkpoints."""

from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, TrainingState, load_checkpoint, save_checkpoint
from .config import MODEL_TYPES, TrainConfig, toy_defaults
from .trainer import Run, RunInfo, Trainer, TrainingDiverged, load_run, make_scheduler, plan_run, train

__all__ = [
    "CHECKPOINT_NAME", "CONFIG_NAME", "LOG_NAME", "MODEL_TYPES", "Run", "RunInfo", "TrainConfig", "Trainer",
    "TrainingDiverged", "TrainingState", "load_checkpoint", "load_run", "make_scheduler", "plan_run", "save_checkpoint",
    "toy_defaults", "train",
]
