"""Synthetic studies for the local run, tests and benchmarks: copies of pydicom's CT test image with
a study's own UIDs, written to the platform's study storage (a gs:// prefix per study)."""
from __future__ import annotations

import io
from dataclasses import dataclass

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root for generated UIDs


@dataclass(frozen=True)
class StudyFile:
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    data: bytes

    def ref(self) -> dict:
        return {"series_instance_uid": self.series_instance_uid, "sop_class_uid": self.sop_class_uid,
                "sop_instance_uid": self.sop_instance_uid}


def make_study(study_uid: str, count: int, *, series: int = 1, patient_id: str = "SYN0001",
               start: int = 0, source: str = "CT_small.dcm") -> list[StudyFile]:
    """``count`` instances spread over ``series`` series; ``start`` offsets instance numbers so a
    later call adds new instances (late images) to the same study."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = dcmread(get_testdata_file(source))
    out = []
    for n in range(start, start + count):
        ds = template.copy()
        s = n % series
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid(prefix=UID_ROOT, entropy_srcs=[study_uid, "series", str(s)])
        ds.SOPInstanceUID = generate_uid(prefix=UID_ROOT, entropy_srcs=[study_uid, "instance", str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = patient_id, "SYNTHETIC^PATIENT"
        ds.SeriesNumber, ds.InstanceNumber = s + 1, n + 1
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(StudyFile(str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID), buf.getvalue()))
    return out


def upload(gcs_client, storage_uri: str, files: list[StudyFile]) -> None:
    """Write the files under ``gs://bucket/prefix/`` as the platform's study storage would."""
    from concurrent.futures import ThreadPoolExecutor

    bucket_name, _, prefix = storage_uri[5:].partition("/")
    bucket = gcs_client.bucket(bucket_name)
    if not bucket.exists():
        gcs_client.create_bucket(bucket_name)

    def put(f: StudyFile) -> None:
        bucket.blob(f"{prefix}{f.sop_instance_uid}.dcm").upload_from_string(f.data, content_type="application/dicom")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, files))
