"""Datasets: the Kermany manifest and its patient-grouped split (`dataset`), RSNA folders (`rsna`), the bundled
sample, and the decode-once tensor cache. Imports base and imaging.
"""
