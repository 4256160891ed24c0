"""The reference model: a classic CT body mask (CPU only, no weights, deterministic).

It exists so the inference pipeline can be deployed and tested end to end without a trained
model, and as a worked example of the :class:`~dicomweb_core.hooks.inference.model.Model` interface.
It is **not a diagnostic device** and makes no clinical claim.

Algorithm (on a series of single-frame CT Image Storage slices, PS3.3 A.3):

1. Sort the slices along the slice normal (Image Position/Orientation (Patient), PS3.3
   C.7.6.2) and check they form one regular volume (same Rows, Columns, Pixel Spacing and
   orientation; regular slice spacing); otherwise decline.
2. Convert stored values to Hounsfield units with Rescale Slope and Intercept (PS3.3 C.11.1.1.2).
3. Threshold: a voxel is "dense" when HU > -500, halfway between air (-1000) and soft
   tissue / water (about 0). Fat (about -100), tissue, bone and contrast pass; air does not.
4. Keep the largest 3D connected component of the dense voxels, with 6-connectivity
   (faces only; ``scipy.ndimage.label``). Noise specks, clothing, and the table or couch
   are other components and are dropped.
5. Fill holes slice by slice in the image plane (``scipy.ndimage.binary_fill_holes``), so
   that enclosed air - lungs, airways, bowel gas - counts as body.

Measurements (PS3.16 TID 300), reported for the final mask: body volume in mL (voxel count x
voxel volume from Pixel Spacing and the slice spacing), mean attenuation in HU inside the mask
(including the filled air, so lungs lower it), and the number of slices that contain body.
The slice spacing is the median gap between sorted positions, or Slice Thickness when the
positions are missing.

Assumptions and limits:

* Table and couch removal relies on them being a separate component: a table touching the
  patient in any slice (6-connected) is counted as body. Immobilisation devices, blankets and
  positioning aids that touch the skin are included too.
* Holes are filled in the acquisition plane only: air that is open to the outside in every
  slice (e.g. a nostril, the mouth, a colostomy) is not filled.
* Voxel volume assumes an orthogonal grid; a gantry-tilted series is measured along the
  slice normal, which is still the correct voxel volume.
* Body parts outside the reconstruction field of view are missing from the mask.
* Memory is about 6 bytes per voxel on top of the decoded pixel data (mask and labels).
* Enhanced (multi-frame) CT is declined, as are series with inconsistent geometry, with no
  dense voxel at all, or with anything but CT Image Storage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as PydicomCode
from pydicom.uid import CTImageStorage
from scipy import ndimage

from dicomweb_core.hooks.inference.model import Code, Measurement, ModelResult, SeriesDescriptor
from dicomweb_core.hooks.inference.volume import is_multiframe, modality_values, regular_volume

log = logging.getLogger(__name__)

HU_THRESHOLD = -500.0
MM3_PER_ML = 1000.0


def _code(code: PydicomCode) -> Code:
    return Code(value=code.value, scheme=code.scheme_designator, meaning=code.meaning)


# Segmentation Property Category (CID 7150) and Type (CID 7151).
BODY_CATEGORY = _code(codes.cid7150.AnatomicalStructure)  # SCT 91723000
BODY_TYPE = _code(codes.cid7151.EntireBody)  # SCT 38266002
BODY_LABEL = "Body"

VOLUME = _code(codes.SCT.Volume)  # SCT 118565006, PS3.16 CID 7469
MILLILITER = Code("mL", "UCUM", "milliliter")
ATTENUATION = _code(codes.DCM.AttenuationCoefficient)  # DCM 112031, CID 7469
MEAN = _code(codes.SCT.Mean)  # SCT 373098007, CID 7464 (derivation)
HOUNSFIELD_UNIT = _code(codes.UCUM.HounsfieldUnit)  # [hnsf'U]
# No standard concept counts slices; "99" designators are for local codes (PS3.16 §8).
LOCAL_SCHEME = "99SDW"
SLICES_WITH_BODY = Code("SLICESWITHBODY", LOCAL_SCHEME, "Number of slices containing body")
SLICES = Code("{slices}", "UCUM", "slices")


class CtBodyMaskModel:
    """The body of a CT series as one segment, with its volume and mean attenuation."""

    name = "ct-body-mask"
    version = "1.0.0"

    def accepts(self, series: SeriesDescriptor) -> bool:
        return series.modality.upper() == "CT" and series.sop_class_uid == CTImageStorage

    def run(self, datasets: Sequence[Dataset]) -> ModelResult | None:
        if not datasets:
            return None
        for ds in datasets:
            if str(ds.get("SOPClassUID", "")) != CTImageStorage or is_multiframe(ds):
                log.info("%s declines: only single-frame CT Image Storage is supported", self.name)
                return None
        volume = regular_volume(self.name, datasets)
        if volume is None:
            return None
        spacing, order = volume
        rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)

        dense = np.empty((len(order), rows, columns), dtype=np.bool_)
        for position, index in enumerate(order):
            hu = modality_values(datasets[index])
            if hu.shape != (rows, columns):
                log.info("%s declines: the pixel data does not match Rows and Columns", self.name)
                return None
            dense[position] = hu > HU_THRESHOLD
        labels, count = ndimage.label(dense, structure=ndimage.generate_binary_structure(3, 1))
        del dense
        if count == 0:
            log.info("%s declines: no voxel above %s HU", self.name, HU_THRESHOLD)
            return None
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0  # background
        body = labels == int(np.argmax(sizes))
        del labels
        for position in range(body.shape[0]):
            body[position] = ndimage.binary_fill_holes(body[position])

        voxels = int(np.count_nonzero(body))
        hu_sum = 0.0
        for position, index in enumerate(order):
            if body[position].any():
                hu_sum += float(modality_values(datasets[index])[body[position]].sum(dtype=np.float64))
        slices_with_body = int(np.count_nonzero(body.any(axis=(1, 2))))

        mask = np.empty_like(body)
        mask[order] = body  # back to the order of the input datasets
        return ModelResult(
            mask=mask,
            segment_label=BODY_LABEL,
            segmented_category=BODY_CATEGORY,
            segmented_type=BODY_TYPE,
            measurements=(
                Measurement(VOLUME, voxels * spacing.volume_mm3 / MM3_PER_ML, MILLILITER),
                Measurement(ATTENUATION, hu_sum / voxels, HOUNSFIELD_UNIT, derivation=MEAN),
                Measurement(SLICES_WITH_BODY, float(slices_with_body), SLICES),
            ),
        )
