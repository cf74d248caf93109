"""The on-disk format, with no I/O and no torch: records, plan, array declaration, codecs, fidelity.

- ``records``: the typed, frozen records of a store's root attributes;
- ``plan``: which (epoch, batch) entries a store keeps and what each batch holds;
- ``augmentations`` and ``params``: what the relabel step draws, checks and stores per batch;
- ``arrays``: every stored array, declared once; ``schema``: the root attributes parsed;
- ``entries``: the checks an entry's record must pass; ``codecs`` and ``fidelity``: logits.
"""
