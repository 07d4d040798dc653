"""Sampling loops: noise → data with any scheduler, classifier-free guidance, trajectories."""

from .sampling import DiffusionPipeline, SampleOutput, sample

__all__ = ["DiffusionPipeline", "SampleOutput", "sample"]
