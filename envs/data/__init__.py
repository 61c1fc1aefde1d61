"""Datasets in and out: the native dataset store, collection with experts, and the readers and
writers of other formats.

- ``store``: the native trajectory dataset (``Dataset``, ``DatasetWriter``, ``Episode``); its
  format (``format``: layout, limits, crash rules), the index as columns (``index``) and
  ``upgrade``, which converts a dataset of an older format version in place
- ``collect``: run experts in worker processes and write their episodes
- ``merge``: merge datasets collected separately into one (``merge_datasets``)
- ``minari``: export to and import from Minari
- ``minerl``, ``vpt``: read MineRL v0.4 and OpenAI VPT demonstrations; ``importers`` writes
  them as native datasets; ``video`` reads and writes their mp4 frames
"""
