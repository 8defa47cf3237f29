"""Model construction: tiny random models of the four supported families (:mod:`hallufix.models.tiny`), loading
checkpoints offline (:mod:`hallufix.models.loading`), torchvision-free processors and chat templates
(:mod:`hallufix.models.processors`), aliases (:mod:`hallufix.models.registry`) and per-family adapters
(:mod:`hallufix.models.adapters`). Importing the package imports nothing heavy (no torch)."""
