"""Pixels: decode any upload (`decode`, `dicom`), turn pixels into model input (`preprocess`), augment on the device,
and the corpus of images that are not chest X-rays. Imports only the base modules.
"""
