"""A procedural driving world written as an ordinary nuScenes dataset (devkit-loadable, evaluable).

``generate(SynthConfig.from_preset("tiny", seed=0), out)`` writes the dataset; the Hydra entry point
is ``python -m pipelines.synth``. Modules: :mod:`.config` (what to generate), :mod:`.world` (roads,
agents, paths), :mod:`.meshes` and :mod:`.catalog` (how objects look), :mod:`.render` (open3d ray
casting), :mod:`.generate` (files and tables), :mod:`.rig` (the nuScenes sensor rig).

open3d is imported only when rendering, so importing this package does not need it.
"""

from bevlabels.synthetic.config import SynthConfig, SynthConfigError, preset_names
from bevlabels.synthetic.generate import OutputDirError, generate, generate_scene, read_meta

__all__ = [
    "SynthConfig",
    "SynthConfigError",
    "OutputDirError",
    "generate",
    "generate_scene",
    "preset_names",
    "read_meta",
]
