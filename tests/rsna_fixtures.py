"""Writers for small RSNA-style inputs: a labels CSV in the challenge's format and real DICOM files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

LABEL_COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]


def chest_pixels(jpeg: Path, size: int = 64) -> np.ndarray:
    """A real chest X-ray as a `size` x `size` uint8 array."""
    with Image.open(jpeg) as image:
        return np.asarray(image.convert("L").resize((size, size)), dtype=np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, patient_id: str) -> None:
    """An uncompressed 8-bit MONOCHROME2 PA chest radiograph, as a conforming DICOM file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=8)
    ds.save_as(path, enforce_file_format=True)


def write_labels(path: Path, boxes: dict[str, list[tuple[float, float, float, float]]]) -> None:
    """`stage_2_train_labels.csv` rows: one per box, or one empty `Target=0` row for a patient without boxes."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LABEL_COLUMNS)
        for patient_id, patient_boxes in boxes.items():
            if not patient_boxes:
                writer.writerow([patient_id, "", "", "", "", 0])
            for box in patient_boxes:
                writer.writerow([patient_id, *box, 1])
