"""DICOM archives (medcodec.dicom): byte-exact restore, lossy DICOM output, bad input.

Every study is a few synthetic files of 16 x 16 or 15 x 15 pixels, written with pydicom.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, RLELossless  # noqa: E402

import medcodec  # noqa: E402
from medcodec import cli, dicom  # noqa: E402
from medcodec.coding.entropy import unzstd  # noqa: E402
from medcodec.dicom import archive  # noqa: E402
from medcodec.errors import (  # noqa: E402
    ChecksumError,
    CorruptStreamError,
    InvalidInputError,
    MissingExtraError,
    OutputExistsError,
    TruncatedStreamError,
)
from tests.conftest import synthetic  # noqa: E402

STUDY = "1.2.826.0.1.3680043.8.498.1"
CT_SERIES, MR_SERIES = STUDY + ".1", STUDY + ".2"


def image(
    k: int,
    pixels: np.ndarray,
    *,
    series: str = CT_SERIES,
    implicit: bool = False,
    z0: float = 0.0,
    bits_stored: int | None = None,
    private: bool = False,
    modality: str = "CT",
) -> bytes:
    """One slice as a DICOM file: slice ``k`` of a series, at z = z0 + 2.5 k mm."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    meta.MediaStorageSOPInstanceUID = f"{series}.{k + 1}"
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "P-001", modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = STUDY, series, f"{modality} test"
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [-10.0, 20.0, z0 + 2.5 * k]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.75, 0.5], 2.5
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = 8 * pixels.dtype.itemsize
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(pixels.dtype.kind == "i")
    if private:
        ds.add_new(0x00090010, "LO", "MEDCODEC TEST")
        ds.add_new(0x00091001, "OB", bytes(range(7)))
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def spliced(data: bytes, raw_before_pixels: bytes, raw_after: bytes) -> bytes:
    """A file with raw elements put just before Pixel Data and after it (odd lengths allowed)."""
    at = pydicom.dcmread(io.BytesIO(data)).get_item(0x7FE00010).value_tell - 12  # explicit VR OW header
    return data[:at] + raw_before_pixels + data[at:] + raw_after


def text_report() -> bytes:
    """A Basic Text SR: a DICOM object without pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = STUDY + ".9.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.Modality, ds.PatientName = STUDY, "SR", "Doe^Jane"
    item = Dataset()
    item.ValueType, item.TextValue = "TEXT", "No findings."
    ds.ContentSequence = [item]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def rle_image() -> bytes:
    """A slice in RLE Lossless, an encapsulated (compressed) transfer syntax."""
    ds = pydicom.dcmread(io.BytesIO(image(0, synthetic((1, 16, 16), "int16")[0], series=STUDY + ".3")))
    ds.compress(RLELossless)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def study_files() -> dict[str, bytes]:
    """Two series (explicit VR int16 CT, implicit VR uint8 MR of odd pixel length) in nested
    folders, named against their order, with private tags and odd-length elements."""
    ct = synthetic((4, 16, 16), "int16", seed=1)
    mr = synthetic((3, 15, 15), "uint8", seed=2)
    odd = struct.pack("<HH2sH", 0x0029, 0x0010, b"LO", 3) + b"ODD"  # an odd value length
    pad = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 5) + b"\x00" * 5  # odd trailing padding
    files = {f"ct/{9 - k:02d}.dcm": image(k, ct[k], private=True) for k in range(4)}
    files["ct/09.dcm"] = spliced(files["ct/09.dcm"], odd, pad)
    files.update(
        {f"mr/deep/er/im{k}": image(k, mr[k], series=MR_SERIES, implicit=True, modality="MR") for k in (2, 0, 1)}
    )
    return files


def test_a_study_comes_back_byte_for_byte(tmp_path: Path) -> None:
    files = study_files()
    files |= {"reports/sr.dcm": text_report(), "rle.dcm": rle_image(), "README.txt": b"not a DICOM file\n"}
    write_tree(tmp_path / "study", files)
    data = dicom.pack(tmp_path / "study")
    assert dicom.is_archive(data) and not data.startswith(b"\x89MCZ")
    written = dicom.unpack(data, tmp_path / "out")
    restored = {p.relative_to(tmp_path / "out").as_posix(): sha(p.read_bytes()) for p in written}
    assert restored == {name: sha(content) for name, content in files.items()}

    about = dicom.info(data)
    assert (about.files, about.images, about.stored, about.mode) == (10, 7, 3, "lossless")
    assert [(s.uid, s.files, s.rows, s.columns, s.dtype) for s in about.series] == [
        (CT_SERIES, 4, 16, 16, "int16"),
        (MR_SERIES, 3, 15, 15, "uint8"),
    ]
    reasons = {f["path"]: f["reason"] for f in about.stored_files}
    assert reasons == {
        "README.txt": "not DICOM",
        "reports/sr.dcm": "no pixel data",
        "rle.dcm": f"transfer syntax {RLELossless}",
    }


def test_slices_are_coded_in_position_order_whatever_the_file_names(tmp_path: Path) -> None:
    ct = synthetic((4, 16, 16), "int16", seed=1)
    data = dicom.pack_files([(f"{9 - k}.dcm", image(k, ct[k])) for k in range(4)])
    stream = bytes(archive.read_archive(data).sections[b"VOLU"][0])
    np.testing.assert_array_equal(medcodec.decompress(stream).array, ct)


def test_pixel_words_with_bits_above_bits_stored_come_back_exact() -> None:
    rng = np.random.default_rng(3)
    words = (synthetic((2, 16, 16), "uint16", seed=4) & 0x0FFF) | (rng.integers(0, 16, (2, 16, 16)) << 12)
    files = [(f"{k}.dcm", image(k, words[k].astype(np.uint16), bits_stored=12)) for k in range(2)]
    data = dicom.pack_files(files)
    assert dicom.info(data).images == 2
    assert dicom.restore(data) == files


def test_images_the_codec_does_not_take_are_stored_whole() -> None:
    one = image(0, synthetic((1, 16, 16), "int16")[0])
    ds = pydicom.dcmread(io.BytesIO(one))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(16 * 16 * 3)
    rgb = io.BytesIO()
    ds.save_as(rgb)
    ds = pydicom.dcmread(io.BytesIO(one))
    ds.NumberOfFrames, ds.PixelData = 2, ds.PixelData * 2
    frames = io.BytesIO()
    ds.save_as(frames)
    files = [
        ("rgb.dcm", rgb.getvalue()),
        ("frames.dcm", frames.getvalue()),
        ("cut.dcm", one[: len(one) - 9]),
        ("half.dcm", one[: len(one) // 2 + 1]),
        ("head.dcm", one[:100]),
    ]
    data = dicom.pack_files(files)
    assert {f["path"]: f["reason"] for f in dicom.info(data).stored_files} == {
        "rgb.dcm": "not monochrome",
        "frames.dcm": "multi-frame",
        "cut.dcm": "damaged DICOM (truncated)",
        "half.dcm": "damaged DICOM (truncated)",
        "head.dcm": "not DICOM",  # ends before its file meta: no DICOM reader takes it
    }
    assert dicom.restore(data) == sorted(files)


#: Files pydicom ships in its wheel, written by many tools: images in every layout the archive
#: codes, and what it stores whole (RLE, JPEG 2000, big endian, deflated, RGB, 1-bit, no file
#: meta, truncated, bad VR, SR, RT plan and structure sets).
PYDICOM_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_truncated.dcm",
    "rtplan.dcm",
    "rtplan_truncated.dcm",
    "rtstruct.dcm",
    "reportsi.dcm",
    "nested_priv_SQ.dcm",
    "no_meta.dcm",
    "JPEG2000.dcm",
    "badVR.dcm",
    "SC_rgb_small_odd.dcm",
    "liver_1frame.dcm",
    "image_dfl.dcm",
]


def test_real_files_of_many_writers_come_back_byte_for_byte() -> None:
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    files = [(n, (root / n).read_bytes()) for n in PYDICOM_FILES if (root / n).is_file()]
    if len(files) < len(PYDICOM_FILES) // 2:
        pytest.skip("pydicom's bundled test files are not installed")
    data = dicom.pack_files(files)
    assert dicom.restore(data) == sorted(files)
    coded = {e.path for e in archive.read_archive(data).entries if e.series is not None}
    images = {"CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm"}
    assert coded == images & {n for n, _ in files}


def test_the_command_line_archives_restores_lists_and_verifies_a_study(tmp_path: Path, capsys) -> None:
    files = study_files()
    write_tree(tmp_path / "study", files)
    assert cli.main(["compress", str(tmp_path / "study"), "--anonymize"]) == 2  # an archive keeps files as they are
    assert "--as-volume" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path / "study"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    arc = tmp_path / "study.mcd"
    assert (summary["output"], summary["mode"], summary["images"], summary["stored"]) == (str(arc), "lossless", 7, 0)
    assert summary["archive_bytes"] == arc.stat().st_size
    assert cli.main(["info", str(arc), "--json"]) == 0
    about = json.loads(capsys.readouterr().out)
    assert (about["kind"], about["files"], len(about["series"])) == ("dicom-archive", 7, 2)
    assert cli.main(["info", str(arc)]) == 0
    text = capsys.readouterr().out
    assert "7: 7 images in 2 series, 0 stored whole" in text and "CT 'CT test', 4 files" in text
    assert cli.main(["test", str(arc)]) == 0
    assert "OK (7 files, 2 series" in capsys.readouterr().out
    assert cli.main(["test", str(arc), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["ok"] is True
    assert cli.main(["decompress", str(arc), "-q"]) == 0  # study/ exists: study.decoded/ beside it
    out = tmp_path / "study.decoded"
    assert {n: sha((out / n).read_bytes()) for n in files} == {n: sha(c) for n, c in files.items()}
    assert cli.main(["decompress", str(arc), "-o", str(out), "-q"]) == 9  # nothing replaced without --force
    assert "exists; use --force" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path / "study"), "--as-volume", "-q", "-o", str(tmp_path / "v.mcz")]) == 8
    assert "DICOM series found" in capsys.readouterr().err  # two series: the volume path takes one


def test_lossy_output_is_valid_dicom_with_the_lossy_attributes(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    ct = synthetic((4, 16, 16), "int16", seed=5)
    files = {f"ct/{k}.dcm": image(k, ct[k], private=True) for k in range(4)}
    write_tree(tmp_path / "study", files)
    assert cli.main(["compress", str(tmp_path / "study"), "--max-error", "3", "-q"]) == 0
    assert dicom.info((tmp_path / "study.mcd").read_bytes()).mode == "near-lossless"
    assert cli.main(["decompress", str(tmp_path / "study.mcd"), "-o", str(tmp_path / "lossy"), "-q"]) == 0
    for k in range(4):
        before = pydicom.dcmread(io.BytesIO(files[f"ct/{k}.dcm"]))
        after = pydicom.dcmread(tmp_path / "lossy" / "ct" / f"{k}.dcm")
        assert after.LossyImageCompression == "01" and after.LossyImageCompressionMethod == dicom.LOSSY_METHOD
        assert float(after.LossyImageCompressionRatio) > 0
        assert after.SOPInstanceUID != before.SOPInstanceUID == f"{CT_SERIES}.{k + 1}"
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert (after.PatientName, after.SeriesInstanceUID, after[0x00091001].value) == (
            before.PatientName,
            before.SeriesInstanceUID,
            before[0x00091001].value,
        )
        error = np.abs(after.pixel_array.astype(int) - ct[k])
        assert error.max() <= 3 and error.any()

    def read_series(folder: Path):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
        return reader.Execute()

    original, decoded = read_series(tmp_path / "study" / "ct"), read_series(tmp_path / "lossy" / "ct")
    assert decoded.GetSize() == (16, 16, 4)
    np.testing.assert_allclose(decoded.GetSpacing(), (0.5, 0.75, 2.5))
    np.testing.assert_allclose(decoded.GetOrigin(), original.GetOrigin())
    np.testing.assert_allclose(decoded.GetDirection(), original.GetDirection())
    assert np.abs(sitk.GetArrayFromImage(decoded).astype(int) - ct).max() <= 3


def test_a_lossy_archive_is_deterministic() -> None:
    files = [(f"{k}.dcm", image(k, synthetic((2, 16, 16), "int16", seed=6)[k])) for k in range(2)]
    first = dicom.restore(dicom.pack_files(files, quality=30))
    assert first == dicom.restore(dicom.pack_files(files, quality=30))
    assert pydicom.dcmread(io.BytesIO(first[0][1])).LossyImageCompression == "01"


def test_bad_input_gives_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no files"):
        dicom.pack(tmp_path / "empty")
    assert cli.main(["compress", str(tmp_path / "empty")]) == 2
    assert "holds no files" in capsys.readouterr().err
    write_tree(tmp_path / "notes", {"a.txt": b"text", "b/c.nii": b"\x00" * 400})
    with pytest.raises(InvalidInputError, match="none of the 2 files is DICOM"):
        dicom.pack(tmp_path / "notes")
    with pytest.raises(InvalidInputError, match="mutually exclusive"):
        dicom.pack_files([("a.dcm", b"")], quality=30, max_error=1)
    with pytest.raises(InvalidInputError, match="not a relative path"):
        dicom.pack_files([("../a.dcm", b"")])


def _archive_with(data: bytes, **change) -> bytes:
    """The archive rebuilt from its own parts, with some replaced (CRCs recomputed)."""
    p = archive.read_archive(data)
    heads = unzstd(bytes(p.sections[b"HEAD"][0]), 1 << 30)
    files = unzstd(bytes(p.sections[b"FILE"][0]), 1 << 30)
    parts = {
        "series": p.series,
        "entries": p.entries,
        "heads": heads,
        "stored": files,
        "streams": [bytes(s) for s in p.sections[b"VOLU"]],
    } | change
    return archive.write_archive(**parts)


def test_a_damaged_archive_is_reported_never_restored_wrong(tmp_path: Path, capsys) -> None:
    ct = synthetic((2, 16, 16), "int16", seed=7)
    files = [(f"{k}.dcm", image(k, ct[k])) for k in range(2)] + [("notes.txt", b"kept as it is")]
    data = dicom.pack_files(files)
    assert _archive_with(data) == data  # the rebuild itself changes nothing
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(CorruptStreamError, match="checksum mismatch"):
        dicom.restore(bytes(flipped))
    with pytest.raises(TruncatedStreamError):
        dicom.restore(data[:-9])
    p = archive.read_archive(data)
    heads = unzstd(bytes(p.sections[b"HEAD"][0]), 1 << 30)
    with pytest.raises(ChecksumError, match="0.dcm"):  # a damaged header that passes the CRC
        dicom.restore(_archive_with(data, heads=heads[:200] + bytes([heads[200] ^ 1]) + heads[201:]))
    with pytest.raises(ChecksumError, match="notes.txt"):
        dicom.restore(_archive_with(data, stored=b"kept as it iz"))
    relabelled = [archive.Series(**{**vars(s), "mode": "lossy"}) for s in p.series]
    with pytest.raises(CorruptStreamError, match="mode"):  # would skip the files' checksums
        dicom.restore(_archive_with(data, series=relabelled))
    escape = [archive.Entry(**{**vars(e), "path": "../" + e.path}) if e.series is None else e for e in p.entries]
    with pytest.raises(CorruptStreamError, match="outside its folder"):
        dicom.unpack(_archive_with(data, entries=escape), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "bad.mcd").write_bytes(bytes(flipped))
    assert cli.main(["test", str(tmp_path / "bad.mcd")]) == 4
    assert "checksum mismatch" in capsys.readouterr().err
    assert cli.main(["decompress", str(tmp_path / "bad.mcd"), "-o", str(tmp_path / "out")]) == 4
    assert not (tmp_path / "out").exists()  # nothing written from a damaged archive


def test_an_archive_is_not_a_stream_and_a_stream_is_not_an_archive() -> None:
    data = dicom.pack_files([("0.dcm", image(0, synthetic((1, 16, 16), "int16")[0]))])
    stream = medcodec.compress(synthetic((1, 16, 16), "int16"), max_error=0)
    assert dicom.is_archive(data) and not dicom.is_archive(stream)
    with pytest.raises(CorruptStreamError, match="not a medcodec stream"):
        medcodec.decompress(data)
    with pytest.raises(CorruptStreamError, match="not a medcodec DICOM archive"):
        dicom.info(stream)


def test_packing_without_pydicom_names_the_extra_and_restoring_needs_none(monkeypatch) -> None:
    files = [("0.dcm", image(0, synthetic((1, 16, 16), "int16")[0]))]
    data = dicom.pack_files(files)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install medcodec\[dicom\]"):
        dicom.pack_files(files)
    assert dicom.restore(data) == files


def test_unpack_replaces_nothing_without_force(tmp_path: Path) -> None:
    files = [("a/0.dcm", image(0, synthetic((1, 16, 16), "int16")[0])), ("b.txt", b"x")]
    data = dicom.pack_files(files)
    write_tree(tmp_path / "out", {"b.txt": b"mine"})
    with pytest.raises(OutputExistsError):
        dicom.unpack(data, tmp_path / "out")
    assert not (tmp_path / "out" / "a").exists() and (tmp_path / "out" / "b.txt").read_bytes() == b"mine"
    dicom.unpack(data, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "b.txt").read_bytes() == b"x"


def test_sections_are_framed_as_documented() -> None:
    data = dicom.pack_files([("0.dcm", image(0, synthetic((1, 16, 16), "int16")[0]))])
    assert data[:8] == archive.ARCHIVE_MAGIC and struct.unpack_from("<HHI", data, 8) == (1, 0, 0)
    kind, length = struct.unpack_from("<4sQ", data, 16)
    (crc,) = struct.unpack_from("<I", data, 28 + length)
    assert kind == b"INDX" and crc == zlib.crc32(data[16 : 28 + length])
    assert data.endswith(struct.pack("<4sQ", b"AEND", 0) + struct.pack("<I", zlib.crc32(b"AEND" + bytes(8))))


def test_several_archives_decompress_in_one_command(tmp_path: Path) -> None:
    studies = {
        name: {"0.dcm": image(0, synthetic((1, 16, 16), "int16", seed=k)[0]), "n.txt": name.encode()}
        for k, name in enumerate(("a", "b"))
    }
    for name, files in studies.items():
        write_tree(tmp_path / name, files)
        assert cli.main(["compress", str(tmp_path / name), "-q"]) == 0
    assert cli.main(["decompress", str(tmp_path / "a.mcd"), str(tmp_path / "b.mcd"), "-q"]) == 0
    for name, files in studies.items():  # a/ and b/ exist: each goes beside its study
        assert {n: (tmp_path / f"{name}.decoded" / n).read_bytes() for n in files} == files


def test_mutated_archives_restore_the_packed_files_or_are_refused() -> None:
    """Flipped bytes, cuts, and index fields set to hostile values (CRCs recomputed): each
    archive either restores files that were packed or raises a MedcodecError, nothing else."""
    import random

    files = study_files() | {"sr.dcm": text_report(), "x.txt": b"kept"}
    data = dicom.pack_files(list(files.items()))
    contents = set(files.values())
    p = archive.read_archive(data)
    index = json.loads(unzstd(bytes(p.sections[b"INDX"][0]), 1 << 20))
    values = ["lossy", "uint8", "../x", "/x", "a//b", "", None, [], {}, True, -1, 0, 1, 7, 2**40, 1.5, "0" * 64]
    rng = random.Random(5)

    def rebuilt(changed: dict) -> bytes:
        text = json.dumps(changed).encode()
        return data[:16] + archive._section(b"INDX", archive._zstd(text)) + data[28 + len(p.sections[b"INDX"][0]) + 4 :]

    blobs = []
    for _ in range(150):
        changed = json.loads(json.dumps(index))
        item = rng.choice(changed[rng.choice(["series", "files"])])
        item[rng.choice([*item, "extra"])] = rng.choice(values)
        blobs.append(rebuilt(changed))
    for _ in range(150):
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        blobs.append(bytes(b[: rng.randrange(len(b))] if rng.random() < 0.3 else b))
    refused = 0
    for blob in blobs:
        try:
            out = dicom.restore(blob)
        except medcodec.MedcodecError:
            refused += 1
            continue
        assert {content for _, content in out} <= contents
    assert 0 < refused < len(blobs)
