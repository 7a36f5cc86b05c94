"""The trainer: Lightning modules, data modules and models, configured by Hydra (``conf/``).

Importing it registers the OmegaConf resolver ``len`` (``${len:${class_names}}``), so configs can say
"as many as there are classes" once.
"""

from omegaconf import OmegaConf

OmegaConf.register_new_resolver("len", lambda seq: len(seq), replace=True)
