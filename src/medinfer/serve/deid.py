"""De-identification before storage: a documented subset of the DICOM PS3.15 Basic Profile.

What :func:`deidentify` does (PS3.15 Annex E, Table E.1-1 actions):

* **Z** (replace with empty): PatientName, PatientID, PatientBirthDate, AccessionNumber,
  StudyID, ReferringPhysicianName, StudyDate, StudyTime (Type 2 attributes stay present);
* **X** (remove): PatientBirthTime, PatientAddress, PatientTelephoneNumbers,
  OtherPatientIDs, OtherPatientNames, OtherPatientIDsSequence, PatientMotherBirthName,
  MilitaryRank, EthnicGroup, Occupation, AdditionalPatientHistory, PatientComments,
  InstitutionName, InstitutionAddress, InstitutionalDepartmentName, StationName,
  PerformingPhysicianName, OperatorsName, NameOfPhysiciansReadingStudy,
  PhysiciansOfRecord, RequestingPhysician, DeviceSerialNumber, SeriesDate/Time,
  AcquisitionDate/Time, ContentDate/Time, InstanceCreationDate/Time, AcquisitionDateTime,
  RequestAttributesSequence, and every private attribute (Basic Profile: X for private tags);
* sets PatientIdentityRemoved = YES and DeidentificationMethod, and adds code
  113100 (Basic Application Confidentiality Profile) and 113110 (Retain UIDs Option)
  to DeidentificationMethodCodeSequence.

UIDs are kept (the **Retain UIDs Option**, 113110) so that results still reference the
study in the sending PACS. Not done: burned-in annotation detection, pixel
cleaning, and the Basic Profile's free-text attributes beyond the list above.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = ["deidentify"]

_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyID",
          "ReferringPhysicianName", "StudyDate", "StudyTime")
_REMOVE = ("PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDs",
           "OtherPatientNames", "OtherPatientIDsSequence", "PatientMotherBirthName",
           "MilitaryRank", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
           "PatientComments", "InstitutionName", "InstitutionAddress",
           "InstitutionalDepartmentName", "StationName", "PerformingPhysicianName",
           "OperatorsName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
           "RequestingPhysician", "DeviceSerialNumber", "SeriesDate", "SeriesTime",
           "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime",
           "InstanceCreationDate", "InstanceCreationTime", "AcquisitionDateTime",
           "RequestAttributesSequence")


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def deidentify(ds: Dataset) -> Dataset:
    """Apply the subset described in the module docstring to ``ds`` in place; returns it."""
    for keyword in _EMPTY:
        if keyword in ds:
            setattr(ds, keyword, "")
    for keyword in _REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    ds.remove_private_tags()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "medinfer: PS3.15 Basic Profile subset, Retain UIDs"
    ds.DeidentificationMethodCodeSequence = Sequence([
        _code("113100", "Basic Application Confidentiality Profile"),
        _code("113110", "Retain UIDs Option"),
    ])
    return ds
