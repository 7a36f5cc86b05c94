"""A procedural driving world written as an ordinary nuScenes dataset (devkit-loadable, evaluable), or as
Argoverse 2 sensor logs that av2's own loaders read.

``generate(SynthConfig.from_preset("tiny", seed=0), out)`` writes the dataset; the Hydra entry point
is ``python -m pipelines.synth``. Modules: :mod:`.config` (what to generate), :mod:`.world` (roads,
agents, paths), :mod:`.meshes` and :mod:`.catalog` (how objects look), :mod:`.render` (open3d ray
casting), :mod:`.generate` (files and tables), :mod:`.rig` (the nuScenes sensor rig); :mod:`.av2_generate`
and :mod:`.av2_rig` the AV2 format (``generate_av2``: 10 Hz logs, 7 ring cameras, the front one
portrait); :mod:`.formats` the writers by format and ``ensure_world`` (a configured world on first use).

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
