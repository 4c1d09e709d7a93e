"""DICOM archives against the other lossless ways to store a study.

    PYTHONPATH=src:. python -m benchmarks.dicom [--volumes NAME,...] [--slices N]

Each volume of the test split named (default: all six, 3 CT and 3 MR) becomes one DICOM series
(one file per slice, explicit VR little endian, headers written by :func:`series_files`: the
attributes a scanner writes per series and per slice, and a private block with a per-slice
binary part as scanners' private headers have). The data folder holds no DICOM files (only
NIfTI), so these are the studies. A CT is stored unsigned with Rescale Intercept = its minimum,
as many scanners store CT, so that no codec meets a sign wrap. Each study is then stored as:

* the files as they are;
* zstd -19 of each file (as the ``zstd`` command compresses files one by one);
* the same files with their Pixel Data re-encoded, JPEG 2000 lossless (OpenJPEG through
  imagecodecs, reversible 5/3, transfer syntax 1.2.840.10008.1.2.4.90) and JPEG-LS lossless
  (CharLS, 1.2.840.10008.1.2.4.80), written as real encapsulated files with pydicom;
* ``tomoz.pack_dicom`` (zstd level 19 for its metadata, built-in models);
* ``medcodec.dicom.pack_files`` (lossless).

Both archives are unpacked and checked file by file. MB/s counts the files' bytes (10^6)
over wall-clock seconds of one call, on a shared machine. A second table compares ways of
coding the headers (every file's bytes but its pixel values): what the archive does (one
zstd -19 frame over all of them), each header alone, and each with a dictionary trained on
the study's headers (``zstandard.train_dictionary``, the dictionary's size included).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import time

import numpy as np
import zstandard

from benchmarks.volumes import default_volume_paths, load_volume, volume_name

DEFAULT_VOLUMES = (
    "ct_chest_siemens_sensation10_b40f_lungpetctdx_a0002",
    "ct_chest_siemens_sensation10_b70f_lungpetctdx_a0002",
    "ct_abdomen_philips_bigbore_pancreasctcbct_pyvista",
    "mr_t1_3d_siemens_verio_seg3d_dicom",
    "mr_head_t2w_niivue",
    "mr_breast_breast1_pyradiomics",
)
JPEG2000_LOSSLESS, JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def series_files(vol, k_series: int) -> list[tuple[str, bytes]]:
    """One DICOM file per slice of a benchmark volume (x, y spacing, origin and direction kept)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

    a = vol.array
    shift = min(0, int(a.min()))
    stored = (a.astype(np.int64) - shift).astype(np.uint16)
    bits = max(8, int(stored.max()).bit_length())
    ct = vol.modality == "CT"
    d = np.array(vol.direction).reshape(3, 3)
    row, col, normal = d[:, 0], d[:, 1], d[:, 2]
    study, series = _uid("study", vol.name), _uid("series", vol.name)
    rng = np.random.default_rng(k_series)
    files = []
    for k in range(a.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if ct else MRImageStorage
        meta.MediaStorageSOPInstanceUID = _uid("instance", vol.name, k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
        meta.ImplementationVersionName = "SCANNER_1_0"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240115"
        ds.StudyTime, ds.SeriesTime = "101500", "102000"
        ds.AcquisitionTime = ds.ContentTime = f"1021{k // 60 % 60:02d}.{(k * 37) % 1000:03d}"
        ds.AccessionNumber, ds.Modality = f"A{k_series:05d}", vol.modality
        ds.Manufacturer, ds.InstitutionName = "ACME Medical", "General Hospital"
        ds.ReferringPhysicianName, ds.StationName = "Smith^John", "SCANNER01"
        ds.StudyDescription, ds.SeriesDescription = "Benchmark study", vol.name[:64]
        ds.ManufacturerModelName = "Model X"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "PID0001", "19700101", "F"
        ds.PatientAge, ds.PatientWeight = "054Y", 61.5
        ds.BodyPartExamined = "CHEST" if ct else "HEAD"
        ds.SliceThickness = f"{vol.spacing[2]:.3f}"
        if ct:
            ds.KVP, ds.XRayTubeCurrent, ds.ExposureTime = 120, 250 + int(rng.integers(0, 40)), 500
            ds.ConvolutionKernel, ds.GantryDetectorTilt, ds.PatientPosition = "B40f", 0, "HFS"
        else:
            ds.RepetitionTime, ds.EchoTime, ds.MagneticFieldStrength = 2000, 90, 3
            ds.ScanningSequence, ds.SequenceVariant, ds.PatientPosition = "SE", "SK", "HFS"
        ds.SoftwareVersions = "VA20"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = "1", k_series + 1, 1, k + 1
        position = np.array(vol.origin) + k * vol.spacing[2] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.FrameOfReferenceUID = _uid("frame", vol.name)
        ds.SliceLocation = f"{float(position @ normal):.4f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = a.shape[1], a.shape[2]
        ds.PixelSpacing = [f"{vol.spacing[1]:.6f}", f"{vol.spacing[0]:.6f}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.WindowCenter, ds.WindowWidth = (40, 400) if ct else (int(stored.mean()), int(stored.std() * 4) + 1)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = shift, 1, "HU" if ct else "US"
        ds.add_new(0x00290010, "LO", "ACME PRIVATE")
        ds.add_new(0x00291008, "CS", "IMAGE NUM 4")
        # A private binary block, as scanners write: mostly constant, a few numbers per slice.
        block = np.zeros(256, np.float32)
        block[:8] = [k, position[2], rng.normal(), 1.0, 2.0, 3.0, 0.5, vol.spacing[2]]
        ds.add_new(0x00291010, "OB", block.tobytes())
        ds.PixelData = stored[k].tobytes()
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        files.append((f"{vol.name}/IM{k + 1:04d}.dcm", out.getvalue()))
    return files


def reencoded(files: list[tuple[str, bytes]], codec: str) -> int:
    """Total bytes of the files with their Pixel Data re-encoded (real encapsulated files)."""
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate

    total = 0
    for k, (_, data) in enumerate(files):
        ds = pydicom.dcmread(io.BytesIO(data))
        frame = ds.pixel_array
        if codec == "jpeg2k":
            code, syntax = imagecodecs.jpeg2k_encode(frame, level=0, reversible=True), JPEG2000_LOSSLESS
            decode = imagecodecs.jpeg2k_decode
        else:
            code, syntax = imagecodecs.jpegls_encode(frame, level=0), JPEGLS_LOSSLESS
            decode = imagecodecs.jpegls_decode
        if k == 0 and not np.array_equal(decode(code), frame):
            raise AssertionError(f"{codec} did not decode losslessly")
        ds.PixelData = encapsulate([bytes(code)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        out = io.BytesIO()
        ds.save_as(out)
        total += out.tell()
    return total


def header_bytes(files: list[tuple[str, bytes]]) -> list[bytes]:
    """Every file's bytes but its pixel values (what the archive codes apart from the pixels)."""
    import pydicom

    heads = []
    for _, data in files:
        elem = pydicom.dcmread(io.BytesIO(data)).get_item(0x7FE00010)
        heads.append(data[: elem.value_tell] + data[elem.value_tell + elem.length :])
    return heads


def header_coding(heads: list[bytes]) -> dict[str, int]:
    """Bytes of the study's headers coded three ways."""
    one = len(zstandard.ZstdCompressor(level=19).compress(b"".join(heads)))
    alone = sum(len(zstandard.ZstdCompressor(level=19).compress(h)) for h in heads)
    best = None
    for size in (1024, 4096, 16384):
        try:
            d = zstandard.train_dictionary(size, heads)
        except zstandard.ZstdError:  # too few samples for this size
            continue
        c = zstandard.ZstdCompressor(level=19, dict_data=d)
        total = len(d.as_bytes()) + sum(len(c.compress(h)) for h in heads)
        best = total if best is None else min(best, total)
    return {"one frame": one, "each alone": alone, "dictionary": best or 0}


def run(volumes: list[str], slices: int | None) -> None:
    import tomoz

    from medcodec import dicom

    paths = {volume_name(p): (p, m) for p, m in default_volume_paths("test")}
    rows, head_rows = [], []
    for k, name in enumerate(volumes):
        path, modality = paths[name]
        vol = load_volume(path, modality)
        if slices and vol.array.shape[0] > slices:
            start = (vol.array.shape[0] - slices) // 2
            vol.array = np.ascontiguousarray(vol.array[start : start + slices])
            vol.name = f"{name}[{start}:{start + slices}]"
        files = series_files(vol, k)
        size = sum(len(d) for _, d in files)
        zstd19 = sum(len(zstandard.ZstdCompressor(level=19).compress(d)) for _, d in files)
        j2k, jls = reencoded(files, "jpeg2k"), reencoded(files, "jpegls")

        if k == 0:
            dicom.pack_files(files[:2])  # untimed: loads what a first call loads (compiled kernels)
        t = time.perf_counter()
        peer, report = tomoz.pack_dicom(files)
        t_peer = time.perf_counter() - t
        t = time.perf_counter()
        back = tomoz.unpack_dicom(peer)
        t_peer_un = time.perf_counter() - t
        if sorted((n, bytes(d)) for n, d in back) != sorted(files):
            raise AssertionError("tomoz.unpack_dicom did not restore the files")

        t = time.perf_counter()
        ours = dicom.pack_files(files)
        t_pack = time.perf_counter() - t
        t = time.perf_counter()
        restored = dicom.restore(ours)
        t_unpack = time.perf_counter() - t
        if [hashlib.sha256(d).digest() for _, d in restored] != [hashlib.sha256(d).digest() for _, d in files]:
            raise AssertionError("medcodec.dicom.restore did not restore the files")
        about = dicom.info(ours)
        mb = size / 1e6
        rows.append(
            (
                vol,
                len(files),
                size,
                zstd19,
                j2k,
                jls,
                len(peer),
                len(ours),
                about.header_bytes,
                mb / t_peer,
                mb / t_peer_un,
                mb / t_pack,
                mb / t_unpack,
            )
        )
        head_rows.append(
            (
                vol.name,
                len(files),
                sum(len(h) for h in header_bytes(files)),
                header_coding(header_bytes(files)),
                report.get("metadata_bytes"),
            )
        )
        print(f"{vol.name}: done", flush=True)

    def mb(n: int) -> str:
        return f"{n / 1e6:.3f}"

    print()
    print(
        "| study (one series) | files | files MB | zstd -19 | JPEG 2000 lossless | JPEG-LS lossless | tomoz.pack_dicom "
        "| medcodec archive | archive / tomoz | archive / JPEG 2000 | archive / JPEG-LS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = np.zeros(6)
    for vol, n, size, z, j, l, peer, ours, *_ in rows:
        shape = "×".join(map(str, vol.array.shape))
        totals += (size, z, j, l, peer, ours)
        print(
            f"| {vol.name} ({vol.modality}, {shape}) | {n} | {mb(size)} | {mb(z)} | {mb(j)} | {mb(l)} | {mb(peer)} "
            f"| {mb(ours)} | {ours / peer:.3f} | {ours / j:.3f} | {ours / l:.3f} |"
        )
    size, z, j, l, peer, ours = totals
    print(
        f"| **all** | {sum(r[1] for r in rows)} | {mb(size)} | {mb(z)} | {mb(j)} | {mb(l)} | {mb(peer)} | {mb(ours)} "
        f"| {ours / peer:.3f} | {ours / j:.3f} | {ours / l:.3f} |"
    )
    print()
    print(
        "| study | tomoz pack MB/s | tomoz unpack MB/s | medcodec pack MB/s | medcodec unpack MB/s | archive's header section |"
    )
    print("|---|---|---|---|---|---|")
    for vol, *_, head, p_pack, p_un, o_pack, o_un in rows:
        print(f"| {vol.name} | {p_pack:.1f} | {p_un:.1f} | {o_pack:.1f} | {o_un:.1f} | {head} B |")
    print()
    print(
        "| study | files | header bytes | one zstd -19 frame (the archive) | each alone, zstd -19 "
        "| each with a trained dictionary (incl. the dictionary) | tomoz's metadata_bytes |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, n, raw, c, peer in head_rows:
        print(f"| {name} | {n} | {raw} | {c['one frame']} | {c['each alone']} | {c['dictionary'] or 'n/a'} | {peer} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--volumes", default=",".join(DEFAULT_VOLUMES), help="test-split volume names, comma-separated")
    p.add_argument("--slices", type=int, default=None, help="keep at most N central slices of each volume")
    args = p.parse_args(argv)
    run([v for v in args.volumes.split(",") if v], args.slices)


if __name__ == "__main__":
    main()
