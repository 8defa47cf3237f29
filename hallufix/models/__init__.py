"""Model construction. One module per supported family in :mod:`hallufix.models.families` (adapter, chat template,
processor specifics, tiny builder, aliases, capabilities) and a registry there that the rest derives from:
tiny random models (:mod:`hallufix.models.tiny`), loading checkpoints offline (:mod:`hallufix.models.loading`),
processors (:mod:`hallufix.models.processors`) and aliases (:mod:`hallufix.models.registry`). Importing the
package imports nothing heavy (no torch)."""
