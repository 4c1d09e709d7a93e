"""``RESULTS.md``: the tables, per volume and per modality, from a run's records."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .bdrate import PSNR_RANGE, bd_rate, psnr_band, psnr_overlap, rate_at_psnr
from .codecs import CODEC_ORDER, JPEG2000, JPEGLS, JPEGXL, JPEGXL_EFFORT, MEDCODEC, SZ3, SZ3_ABS_BOUNDS, TOMOZ
from .measure import Record

__all__ = ["BD_PAIRS", "PSNR_TARGETS", "bd_rates", "render_results", "write_results"]

#: Columns of the bpv-at-PSNR table (dB).
PSNR_TARGETS = (40, 45, 50, 55, 60, 65)
#: (test, reference) codec pairs of the BD-rate table; the last is a baselines-only reference.
#: Lossy sweeps only: tomoz (lossless) and SZ3 (ABS bounds) have no lossy curve, and are
#: compared in the lossless and near-lossless tables instead.
BD_PAIRS = ((MEDCODEC, JPEG2000), (MEDCODEC, JPEGXL), (JPEGXL, JPEG2000))
_LOSSY_CODECS = (JPEG2000, JPEGXL, MEDCODEC)
#: Codecs whose near-lossless settings get a speed column.
_NEAR_SPEED_CODECS = (JPEGLS, SZ3)
_MODALITY_ORDER = ("CT", "MR", "other")
_DASH = "—"


def _fmt(x: float | None, digits: int = 3) -> str:
    return _DASH if x is None else f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _ok(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.error is None]


def _find(records: Sequence[Record], volume: str, key: str) -> Record | None:
    return next((r for r in records if r.volume == volume and r.key == key and r.error is None), None)


def _mean(values: Sequence[float | None], *, require_all: bool = False) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals or (require_all and len(vals) < len(values)):
        return None
    return statistics.fmean(vals)


def _codecs_present(records: Sequence[Record], mode: str, among: Sequence[str] = CODEC_ORDER) -> list[str]:
    present = {r.codec for r in records if r.mode == mode}
    return [c for c in among if c in present]


def _modality_groups(volumes: Sequence[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    groups = [(m, [v["name"] for v in volumes if v["modality"] == m]) for m in _MODALITY_ORDER]
    return [(m, names) for m, names in groups if names]


def _with_modality_means(
    volumes: Sequence[dict[str, Any]],
    n_cols: int,
    cell: Callable[[str, int], float | None],
    digits: int = 3,
    require_all: bool = False,
) -> list[list[str]]:
    """Rows per volume, then one mean row per modality, for a table of numeric cells."""
    rows = [[v["name"], *(_fmt(cell(v["name"], i), digits) for i in range(n_cols))] for v in volumes]
    for modality, names in _modality_groups(volumes):
        means = [_mean([cell(n, i) for n in names], require_all=require_all) for i in range(n_cols)]
        rows.append([f"**{modality} mean (n={len(names)})**", *(_fmt(m, digits) for m in means)])
    return rows


def _z_spacing(v: dict[str, Any]) -> float | None:
    spacing = v.get("spacing") or ()
    return float(spacing[2]) if len(spacing) >= 3 else None


def _describe(v: dict[str, Any]) -> str:
    """``"CT, 134×512×512, 3 mm"``: modality, shape (z×y×x) and z spacing of a volume row."""
    z = _z_spacing(v)
    return f"{v['modality']}, {'×'.join(map(str, v['shape']))}, {_DASH if z is None else f'{z:g} mm'}"


def _with_descriptions(rows: list[list[str]], volumes: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows of :func:`_with_modality_means` with :func:`_describe` after each volume's name."""
    return [[r[0], _describe(volumes[i]) if i < len(volumes) else "", *r[1:]] for i, r in enumerate(rows)]


#: Header of the :func:`_describe` column.
_DESCRIBE_HEADER = "modality, z×y×x, z spacing"


def _curve(records: Sequence[Record], volume: str, codec: str) -> tuple[list[float], list[float]]:
    pts = [r for r in _ok(records) if r.volume == volume and r.codec == codec and r.mode == "lossy"]
    return [r.bpv for r in pts], [r.psnr for r in pts]


def bd_rates(records: Sequence[Record], volume: str) -> dict[tuple[str, str], tuple[float, float, float] | None]:
    """BD-rate (percent, PSNR low, PSNR high) of each :data:`BD_PAIRS` pair on one volume."""
    out: dict[tuple[str, str], tuple[float, float, float] | None] = {}
    for test, ref in BD_PAIRS:
        t_r, t_p = _curve(records, volume, test)
        r_r, r_p = _curve(records, volume, ref)
        value = bd_rate(r_r, r_p, t_r, t_p)
        span = psnr_overlap(r_r, r_p, t_r, t_p)
        out[(test, ref)] = None if value is None or span is None else (value, *span)
    return out


def _lossless_section(records: Sequence[Record], volumes: Sequence[dict[str, Any]]) -> str:
    codecs = _codecs_present(records, "lossless")

    def bpv(name: str, i: int) -> float | None:
        r = next((r for r in _ok(records) if r.volume == name and r.codec == codecs[i] and r.mode == "lossless"), None)
        return None if r is None else r.bpv

    def ratio(name: str, i: int) -> float | None:
        r = next((r for r in _ok(records) if r.volume == name and r.codec == codecs[i] and r.mode == "lossless"), None)
        return None if r is None else r.ratio

    labels = [f"{c} (effort {JPEGXL_EFFORT})" if c == JPEGXL else c for c in codecs]
    text = "## Lossless (bpv, lower is better)\n\n"
    notes = [f"JPEG XL at effort {JPEGXL_EFFORT}"] if JPEGXL in codecs else []
    if TOMOZ in codecs:
        notes.append("tomoz on the whole 3D volume (built-in models), the 2D codecs slice by slice")
    text += "".join(f"{n}; " for n in notes) + "z spacing: distance between slices (mm).\n\n"
    header = ["volume", _DESCRIBE_HEADER, *labels]
    text += _table(header, _with_descriptions(_with_modality_means(volumes, len(codecs), bpv), volumes))
    text += "\nCompression ratio (raw bytes of the original dtype / stream bytes), mean per modality:\n\n"
    rows = [
        [f"{m} (n={len(names)})", *(_fmt(_mean([ratio(n, i) for n in names]), 2) for i in range(len(codecs)))]
        for m, names in _modality_groups(volumes)
    ]
    text += _table(["modality", *labels], rows)
    return text


def _near_lossless_section(records: Sequence[Record], volumes: Sequence[dict[str, Any]]) -> str:
    # Grouped by bound, so the codecs at one bound (JPEG-LS NEAR=2, SZ3 ABS=2, ...) sit together.
    keys = sorted(
        {(r.codec, r.bound or 0, r.param) for r in records if r.mode == "near-lossless"},
        key=lambda k: (k[1], CODEC_ORDER.index(k[0])),
    )
    if not keys:
        return ""

    def cell(name: str, i: int) -> float | None:
        r = _find(records, name, f"{keys[i][0]} {keys[i][2]}")
        return None if r is None else r.bpv

    text = "## Near-lossless (bpv; every voxel within ±bound)\n\n"
    text += (
        "Columns grouped by bound: JPEG-LS NEAR (slice by slice), SZ3 ABS (absolute error "
        "bound, whole 3D volume) and medcodec max_error all guarantee every voxel within "
        "±bound. The last row is the largest voxel error measured on any volume; z spacing: "
        "distance between slices (mm).\n\n"
    )
    rows = _with_modality_means(volumes, len(keys), cell)
    for row, v in zip(rows, volumes):  # flag a broken bound next to its number
        for i, (codec, _, param) in enumerate(keys):
            r = _find(records, v["name"], f"{codec} {param}")
            if r is not None and r.bound_ok is False:
                row[i + 1] += f" ✗ (max err {r.max_abs_error:g})"

    def max_error(i: int) -> str:
        found = [_find(records, v["name"], f"{keys[i][0]} {keys[i][2]}") for v in volumes]
        errs = [r.max_abs_error for r in found if r is not None]
        return _DASH if not errs else f"{max(errs):g}"

    rows.append(["**max abs error (all volumes)**", *(max_error(i) for i in range(len(keys)))])
    text += _table(["volume", _DESCRIBE_HEADER, *(f"{c} {p}" for c, _, p in keys)], _with_descriptions(rows, volumes))
    return text


def _lossy_section(records: Sequence[Record], volumes: Sequence[dict[str, Any]]) -> str:
    codecs = _codecs_present(records, "lossy", _LOSSY_CODECS)
    if not codecs:
        return ""

    def at(name: str, codec: str, target: float) -> float | None:
        rates, psnrs = _curve(records, name, codec)
        return rate_at_psnr(rates, psnrs, target)

    header = ["volume", "codec", *(f"{t} dB" for t in PSNR_TARGETS)]
    rows = [[v["name"], c, *(_fmt(at(v["name"], c, t)) for t in PSNR_TARGETS)] for v in volumes for c in codecs]
    for modality, names in _modality_groups(volumes):
        for c in codecs:
            means = [_mean([at(n, c, t) for n in names], require_all=True) for t in PSNR_TARGETS]
            rows.append([f"**{modality} mean (n={len(names)})**", c, *(_fmt(m) for m in means)])
    text = "## Lossy: bits per voxel needed for a given PSNR (interpolated on each codec's sweep)\n\n"
    text += (
        "PCHIP interpolation of log-bpv over PSNR on each curve's Pareto front; — where the "
        "sweep does not reach that PSNR. Modality means only where every volume has a value.\n\n"
    )
    return text + _table(header, rows)


def _bd_section(records: Sequence[Record], volumes: Sequence[dict[str, Any]]) -> str:
    pairs = [p for p in BD_PAIRS if all(any(r.codec == c and r.mode == "lossy" for r in records) for c in p)]
    if not pairs:
        return ""
    values = {v["name"]: bd_rates(records, v["name"]) for v in volumes}

    def cell_text(res: tuple[float, float, float] | None) -> str:
        return _DASH if res is None else f"{res[0]:+.1f}% ({res[1]:.1f}–{res[2]:.1f} dB)"

    rows = [[v["name"], *(cell_text(values[v["name"]][p]) for p in pairs)] for v in volumes]
    for modality, names in _modality_groups(volumes):
        means = []
        for p in pairs:
            vals = [values[n][p][0] for n in names if values[n][p] is not None]
            means.append(_DASH if not vals else f"{statistics.fmean(vals):+.1f}% (n={len(vals)})")
        rows.append([f"**{modality} mean**", *means])
    text = "## BD-rate (Bjøntegaard delta rate, PSNR)\n\n"
    text += (
        f"Percent bits the first codec needs relative to the second at equal PSNR (negative: "
        f"fewer bits), averaged over the curves' PSNR overlap clipped to "
        f"{PSNR_RANGE[0]:g}–{PSNR_RANGE[1]:g} dB (shown); PCHIP interpolation of log-rate. "
        f"The last column compares two baselines, for reference.\n\n"
    )
    return text + _table(["volume", *(f"{t} vs {r}" for t, r in pairs)], rows)


#: The rates (bpv) of the reference codec over which the second BD-rate table integrates.
RATE_BAND = (0.5, 3.0)


def _band_section(records: Sequence[Record], volumes: Sequence[dict[str, Any]]) -> str:
    """BD-rate of medcodec against JPEG 2000 over the PSNRs where JPEG 2000 spends RATE_BAND bpv."""
    if not all(any(r.codec == c and r.mode == "lossy" for r in records) for c in (MEDCODEC, JPEG2000)):
        return ""
    rows, by_volume = [], {}
    for v in volumes:
        j_r, j_p = _curve(records, v["name"], JPEG2000)
        m_r, m_p = _curve(records, v["name"], MEDCODEC)
        band = psnr_band(j_r, j_p, RATE_BAND)
        value = bd_rate(j_r, j_p, m_r, m_p, band) if band else None
        span = psnr_overlap(j_r, j_p, m_r, m_p, band) if band else None
        by_volume[v["name"]] = value
        rows.append(
            [v["name"], _DASH if value is None or span is None else f"{value:+.1f}% ({span[0]:.1f}–{span[1]:.1f} dB)"]
        )
    for modality, names in _modality_groups(volumes):
        vals = [by_volume[n] for n in names if by_volume[n] is not None]
        rows.append([f"**{modality} mean**", _DASH if not vals else f"{statistics.fmean(vals):+.1f}% (n={len(vals)})"])
    text = f"### Over the band where JPEG 2000 spends {RATE_BAND[0]:g}–{RATE_BAND[1]:g} bpv\n\n"
    text += (
        "The same BD-rate, integrated over the PSNRs at which JPEG 2000's curve spends "
        f"{RATE_BAND[0]:g} to {RATE_BAND[1]:g} bits per voxel (interpolated on its sweep; shown).\n\n"
    )
    return text + _table(["volume", f"{MEDCODEC} vs {JPEG2000}"], rows)


def _sz3_section(records: Sequence[Record], volumes: Sequence[dict[str, Any]]) -> str:
    """medcodec's lossy curve at the PSNR of each SZ3 setting (SZ3 has absolute bounds, no lossy sweep)."""
    rows = []
    for v in volumes:
        m_r, m_p = _curve(records, v["name"], MEDCODEC)
        for r in _ok(records):
            if r.volume != v["name"] or r.codec != SZ3 or r.psnr is None:
                continue
            mine = rate_at_psnr(m_r, m_p, r.psnr) if m_r else None
            cells = [_fmt(mine), _DASH if mine is None else f"{mine / r.bpv:.3f}"]
            rows.append([v["name"], r.param, f"{r.psnr:.1f}", _fmt(r.bpv), *cells])
    if not rows:
        return ""
    text = "### Against SZ3 at equal PSNR\n\n"
    text += (
        "SZ3 runs with absolute error bounds, not a PSNR sweep: each row is one SZ3 setting, its PSNR, and "
        "the bits medcodec's lossy curve needs for that PSNR (interpolated; — beyond the sweep).\n\n"
    )
    return text + _table(["volume", "SZ3 setting", "PSNR (dB)", "SZ3 bpv", "medcodec bpv", "medcodec / SZ3"], rows)


def _speed_columns(records: Sequence[Record]) -> list[tuple[str, Callable[[Record], bool]]]:
    cols: list[tuple[str, Callable[[Record], bool]]] = []
    for c in _codecs_present(records, "lossless"):
        cols.append((f"{c} lossless", lambda r, c=c: r.codec == c and r.mode == "lossless"))
    for c in _codecs_present(records, "lossy", _LOSSY_CODECS):
        cols.append((f"{c} lossy (median of sweep)", lambda r, c=c: r.codec == c and r.mode == "lossy"))
    for c in _codecs_present(records, "near-lossless", _NEAR_SPEED_CODECS):
        label = "NEAR" if c == JPEGLS else "ABS"
        cols.append((f"{c} {label} (median)", lambda r, c=c: r.codec == c and r.mode == "near-lossless"))
    return cols


def _fmt_rate(x: float) -> str:
    # Three significant figures at most, so 0.4 MB/s does not print as 0.
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def _pair_table(records: Sequence[Record], volumes: Sequence[dict[str, Any]], first: str, second: str) -> str:
    cols = _speed_columns(records)

    def cell(name: str, pick: Callable[[Record], bool]) -> str:
        rs = [r for r in _ok(records) if r.volume == name and pick(r)]
        if not rs:
            return _DASH
        a = statistics.median(getattr(r, first) for r in rs)
        b = statistics.median(getattr(r, second) for r in rs)
        return f"{_fmt_rate(a)} / {_fmt_rate(b)}"

    rows = [[v["name"], *(cell(v["name"], pick) for _, pick in cols)] for v in volumes]
    return _table(["volume", *(label for label, _ in cols)], rows)


def _speed_section(records: Sequence[Record], volumes: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    text = "## Speed (MB/s of raw voxels, encode / decode)\n\n"
    text += (
        "One wall-clock run per setting (`time.perf_counter`) in one process on "
        f"{meta.get('machine', 'this machine')}; 1 MB = 10^6 bytes of the original dtype. "
        "Small volumes give noisy numbers."
    )
    if meta.get("load_average"):
        start, end = meta["load_average"]
        text += f" System load average (1 min) at start / end of the run: {start:g} / {end:g}."
    text += "\n\n"
    text += _pair_table(records, volumes, "enc_mbps", "dec_mbps")
    method = meta.get("memory_method", "rss")
    text += "\n## Peak memory (MB, encode / decode)\n\n"
    if method == "rss":
        text += (
            "Growth of the process's peak resident set size over its RSS at the start of "
            "encode (decode): `VmHWM` reset through `/proc/self/clear_refs` after "
            "`malloc_trim`, with glibc's mmap/trim thresholds fixed at 128 KiB so freed "
            "buffers leave the process. Includes native allocations (OpenJPEG, libjxl, torch) "
            "and the output (the decoded volume); excludes the input volume. Memory reused "
            "from allocator free lists is not counted: read these as lower bounds.\n\n"
        )
    else:
        text += (
            "tracemalloc peak over the block: Python-level allocations only; native codec "
            "allocations are not seen, so these are lower bounds.\n\n"
        )
    return text + _pair_table(records, volumes, "enc_peak_mb", "dec_peak_mb")


def _problems_section(records: Sequence[Record]) -> str:
    bad = [r for r in records if r.error is not None or r.bound_ok is False]
    if not bad:
        return ""
    rows = [
        [
            r.volume,
            r.key,
            r.error
            or f"bound {r.bound} broken: max abs error {r.max_abs_error:g}"
            + ("" if r.exact or r.bound != 0 else " (not bit-exact)"),
        ]
        for r in bad
    ]
    return "## Failures and broken guarantees\n\n" + _table(["volume", "setting", "what"], rows)


def render_results(records: Sequence[Record], meta: dict[str, Any]) -> str:
    """The whole ``RESULTS.md`` text.

    Args:
        records: Every measured setting.
        meta: Run description: ``command``, ``date``, ``volumes`` (dicts with ``name``,
            ``modality``, ``shape``, ``spacing`` (x, y, z mm; optional), ``dtype``, ``source``,
            ``ssim_slices``), ``versions``,
            ``messages``, ``figures``, ``quick``, ``ssim_max_voxels``, ``memory_method``, ``machine``.
    """
    volumes = meta["volumes"]
    out = ["# Benchmark results: medcodec and the standard codecs\n"]
    out.append(f"Produced on {meta['date']} by\n\n```\n{meta['command']}\n```\n")
    if meta.get("quick"):
        out.append(
            "**Quick mode: center-cropped volumes and a reduced sweep. Smoke-test numbers, "
            "not comparable to a full run.**\n"
        )
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) + ".\n")
    for msg in meta.get("messages", []):
        out.append(f"- {msg}")
    if meta.get("messages"):
        out.append("")
    out.append("## Method\n")
    ssim_note = (
        "SSIM is 3D (skimage `structural_similarity`, 7-voxel uniform window, "
        "`data_range` = max − min of the whole original, float64)"
    )
    slabs = [f"{v['name']} slices {v['ssim_slices']}" for v in volumes if v.get("ssim_slices")]
    if meta.get("ssim_max_voxels") is None:
        ssim_note += ", not computed in this run"
    elif slabs:
        ssim_note += (
            f"; on volumes over {meta['ssim_max_voxels']:,} voxels it is computed on the "
            f"central slab of whole slices that fits: {'; '.join(slabs)}"
        )
    out.append(
        "All codecs ran in one process on the same in-memory volumes. bpv = 8 × stream bytes / "
        "voxels; ratio = raw bytes of the original dtype / stream bytes; PSNR = 10 log10((max − "
        "min)² / MSE) over the original's own range, MSE over all voxels in float64. "
        f"{ssim_note}. 2D codecs ran slice by slice (one stream per slice, as DICOM stores "
        "frames) on voxels minus the volume minimum in the smallest unsigned type holding the "
        "range (uint8 or uint16); shift, shape and dtype are free side information. Lossless "
        "and near-lossless results were checked on the decoded voxels (bit-exact / within "
        "±bound). JPEG 2000 lossy: OpenJPEG fixed-quality mode (irreversible 9/7), its PSNR "
        "target offset by 20 log10((2^bits − 1)/(max − min)) so the target reads as PSNR over "
        f"max − min. JPEG XL: effort {JPEGXL_EFFORT}, distance sweep. tomoz: `tomoz.encode` / "
        "`tomoz.decode` on the whole 3D volume (uint8/int8/uint16/int16 as they are, other "
        "integer types shifted like the 2D codecs' input), built-in models. SZ3: `pysz` on the "
        "whole 3D volume as int32 (int64 for wider types), absolute error bound "
        f"(`szErrorBoundMode.ABS`) {', '.join(map(str, SZ3_ABS_BOUNDS))}, decoded values clipped "
        "to the original dtype. medcodec: public API only; each setting "
        "first ran once on a small crop so model loading is not timed.\n"
    )
    out.append(
        _table(
            ["volume", "modality", "shape (z×y×x)", "spacing x×y×z (mm)", "dtype", "source"],
            [
                [
                    v["name"],
                    v["modality"],
                    "×".join(map(str, v["shape"])),
                    "×".join(f"{s:g}" for s in v["spacing"]) if v.get("spacing") else _DASH,
                    v["dtype"],
                    v["source"],
                ]
                for v in volumes
            ],
        )
    )
    records = list(records)
    for section in (
        _lossless_section(records, volumes),
        _near_lossless_section(records, volumes),
        _lossy_section(records, volumes),
        _bd_section(records, volumes),
        _band_section(records, volumes),
        _sz3_section(records, volumes),
        _speed_section(records, volumes, meta),
        _problems_section(records),
    ):
        if section:
            out.append(section)
    if meta.get("figures"):
        out.append("## Figures\n")
        out += [f"- [{Path(f).name}]({f})" for f in meta["figures"]]
        out.append("")
    return "\n".join(out)


#: Hand-written reports kept beside RESULTS.md and appended to it, each demoted one heading level.
APPENDICES = ("ATTEMPTS.md", "FEDERATED_RESULTS.md", "DICOM_RESULTS.md")


def appendices(folder: str | Path) -> str:
    """The :data:`APPENDICES` found in ``folder``, as text to append to ``RESULTS.md``."""
    parts = []
    for name in APPENDICES:
        f = Path(folder) / name
        if f.is_file():
            lines = f.read_text().splitlines()
            parts.append("\n".join("#" + ln if ln.startswith("#") else ln for ln in lines))
    return "\n\n".join(["", *parts]) + "\n" if parts else ""


def write_results(records: Sequence[Record], meta: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`render_results` to ``path``, followed by the appendices beside it."""
    path = Path(path)
    path.write_text(render_results(records, meta) + appendices(path.parent))
    return path
