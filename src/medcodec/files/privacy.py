"""Which metadata keys identify a patient, and the metadata left when they are dropped.

A stream stores the volume's metadata as read (:func:`medcodec.read`): the NIfTI header
fields of a NIfTI file, the DICOM tags of a series' first file (keys ``gggg|eeee``,
SimpleITK's spelling). :func:`anonymized` keeps what describes the image and drops what can
identify a person, an institution or a visit: the DICOM attributes of the Basic
Application Level Confidentiality Profile (DICOM PS3.15, Annex E) that SimpleITK passes on,
every private tag (odd group number), and the NIfTI header's free-text fields.

It is a filter of the metadata, not a de-identification of the pixels: burned-in text and
faces in the voxels stay.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["IDENTIFYING_DICOM_TAGS", "FREE_TEXT_NIFTI_FIELDS", "identifying", "anonymized"]

#: DICOM attributes (``gggg|eeee``, lower-case hex) that identify a patient, an
#: institution, a person or a visit, from the PS3.15 Annex E Basic Profile.
IDENTIFYING_DICOM_TAGS: dict[str, str] = {
    "0008|0014": "Instance Creator UID",
    "0008|0018": "SOP Instance UID",
    "0008|0020": "Study Date",
    "0008|0021": "Series Date",
    "0008|0022": "Acquisition Date",
    "0008|0023": "Content Date",
    "0008|0024": "Overlay Date",
    "0008|0025": "Curve Date",
    "0008|002a": "Acquisition DateTime",
    "0008|0030": "Study Time",
    "0008|0031": "Series Time",
    "0008|0032": "Acquisition Time",
    "0008|0033": "Content Time",
    "0008|0050": "Accession Number",
    "0008|0080": "Institution Name",
    "0008|0081": "Institution Address",
    "0008|0090": "Referring Physician's Name",
    "0008|0092": "Referring Physician's Address",
    "0008|0094": "Referring Physician's Telephone Numbers",
    "0008|1010": "Station Name",
    "0008|1030": "Study Description",
    "0008|103e": "Series Description",
    "0008|1040": "Institutional Department Name",
    "0008|1048": "Physician(s) of Record",
    "0008|1050": "Performing Physician's Name",
    "0008|1060": "Name of Physician(s) Reading Study",
    "0008|1070": "Operators' Name",
    "0008|1080": "Admitting Diagnoses Description",
    "0008|1155": "Referenced SOP Instance UID",
    "0008|2111": "Derivation Description",
    "0010|0010": "Patient's Name",
    "0010|0020": "Patient ID",
    "0010|0021": "Issuer of Patient ID",
    "0010|0030": "Patient's Birth Date",
    "0010|0032": "Patient's Birth Time",
    "0010|0040": "Patient's Sex",
    "0010|1000": "Other Patient IDs",
    "0010|1001": "Other Patient Names",
    "0010|1005": "Patient's Birth Name",
    "0010|1010": "Patient's Age",
    "0010|1020": "Patient's Size",
    "0010|1030": "Patient's Weight",
    "0010|1040": "Patient's Address",
    "0010|1060": "Patient's Mother's Birth Name",
    "0010|1090": "Medical Record Locator",
    "0010|2150": "Country of Residence",
    "0010|2152": "Region of Residence",
    "0010|2154": "Patient's Telephone Numbers",
    "0010|2160": "Ethnic Group",
    "0010|2180": "Occupation",
    "0010|21b0": "Additional Patient History",
    "0010|21f0": "Patient's Religious Preference",
    "0010|4000": "Patient Comments",
    "0018|1000": "Device Serial Number",
    "0018|1030": "Protocol Name",
    "0020|000d": "Study Instance UID",
    "0020|000e": "Series Instance UID",
    "0020|0010": "Study ID",
    "0020|0052": "Frame of Reference UID",
    "0020|0200": "Synchronization Frame of Reference UID",
    "0020|4000": "Image Comments",
    "0032|1032": "Requesting Physician",
    "0032|1060": "Requested Procedure Description",
    "0038|0010": "Admission ID",
    "0038|0300": "Current Patient Location",
    "0040|0241": "Performed Station AE Title",
    "0040|0244": "Performed Procedure Step Start Date",
    "0040|0245": "Performed Procedure Step Start Time",
    "0040|0253": "Performed Procedure Step ID",
    "0040|0254": "Performed Procedure Step Description",
    "0040|a124": "UID",
    "0088|0140": "Storage Media File-set UID",
    "3006|0024": "Referenced Frame of Reference UID",
}

#: NIfTI header fields that hold free text (a name or a site can hide there).
FREE_TEXT_NIFTI_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


def _private(key: str) -> bool:
    group = key.split("|", 1)[0]
    return (
        "|" in key and len(group) == 4 and all(c in "0123456789abcdefABCDEF" for c in group) and int(group, 16) % 2 == 1
    )


def identifying(key: str) -> bool:
    """Whether a metadata key can identify a person, an institution or a visit."""
    return key.lower() in IDENTIFYING_DICOM_TAGS or _private(key) or key in FREE_TEXT_NIFTI_FIELDS


def anonymized(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` without the keys :func:`identifying` flags."""
    return {k: v for k, v in metadata.items() if not identifying(k)}
