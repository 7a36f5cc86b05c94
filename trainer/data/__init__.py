"""Lightning data modules: the shared batch dict and base class (:mod:`.common`), one module per modality."""
