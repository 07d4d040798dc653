"""Training: the shared loop and run folder, the DDPM, VAE and ControlNet / LoRA trainers, typed config, exact
checkpoints."""

from .adapters import AdapterConfig, AdapterTrainer
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, TrainingState, load_checkpoint, save_checkpoint
from .config import MODEL_TYPES, TrainConfig, toy_defaults, vae_defaults
from .run import Run, RunInfo, load_run, load_train_data, make_scheduler, plan_run, resume, trainer_class
from .trainer import BaseTrainer, Trainer, TrainingDiverged, train
from .vae_trainer import VAETrainer, vae_loss

__all__ = [
    "AdapterConfig", "AdapterTrainer", "BaseTrainer", "CHECKPOINT_NAME", "CONFIG_NAME", "LOG_NAME", "MODEL_TYPES", "Run", "RunInfo", "TrainConfig",
    "Trainer", "TrainingDiverged", "TrainingState", "VAETrainer", "load_checkpoint", "load_run", "load_train_data",
    "make_scheduler", "plan_run", "resume", "save_checkpoint", "toy_defaults", "train", "trainer_class",
    "vae_defaults", "vae_loss",
]
