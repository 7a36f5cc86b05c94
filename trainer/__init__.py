"""The trainer: Lightning modules, data modules and models, configured by Hydra (``conf/``).

Importing it registers the OmegaConf resolvers ``len`` (``${len:${class_names}}``), so configs can say
"as many as there are classes" once, ``mul`` (``${mul:a,b}``, a product of ints: "twice the channels" for a
two-frame BEV map), and ``auto_accelerator`` / ``auto_precision`` (:mod:`trainer.device`),
with which ``conf/trainer/auto.yaml`` picks the GPU when there is one, in bf16 where it computes it.
"""

from omegaconf import OmegaConf

from trainer.device import register_resolvers

OmegaConf.register_new_resolver("len", lambda seq: len(seq), replace=True)
OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b), replace=True)
register_resolvers()
