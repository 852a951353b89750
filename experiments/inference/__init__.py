"""Turning a trained detector into scores: loading a run (:mod:`.loading`), the one scoring loop
(:mod:`.scoring`), scoring files and folders with tiling (:mod:`.files`, :mod:`.tiling`, :mod:`.domain`) and
the OOD stress engine (:mod:`.stress`). ``evaluate``, ``ood_stress`` and ``detect`` share it."""
