"""The read-only config of models and schedulers (diffusers' ``FrozenDict``), in one place."""

from __future__ import annotations


class FrozenConfig(dict):
    """Constructor arguments as a dict that also reads as attributes (``model.config.block_out_channels``,
    ``scheduler.config.num_train_timesteps``). Read-only: build a new object (``from_config``) to change it."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("a config is read-only; build a new model or scheduler with from_config to change it")

    def __setitem__(self, key, value):
        raise TypeError("a config is read-only; build a new model or scheduler with from_config to change it")
