"""Datasets: the `Dataset` type, Kermany and RSNA folders and the patient-grouped splits (`dataset`), the RSNA
challenge's file format (`rsna`, which `dataset` imports and which imports nothing of `dataset`), the bundled
sample, and the decode-once tensor cache. Imports base and imaging.
"""
