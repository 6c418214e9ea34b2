"""Command line: convert a source into our dataset format (see `tiny_r1v.data`).

    python -m tiny_r1v.data.convert KIND --out DIR [--split train|test] [--limit N] [--seed S] [--overwrite]

writes ``DIR/<split>.jsonl`` and ``DIR/images/*.png``. Kinds:

- Hugging Face Parquet exports (``--input FILE ...``, one split of the export):
  ``geometry3k`` (math), ``chartqa`` (chart), ``ocrvqa`` (ocr); see `tiny_r1v.data.hf_parquet`.
- Offline data from registry packages: ``easy-vqa`` (vqa), ``digits`` (ocr), ``digit-sum``
  (math), ``reasoning-gym`` (math, ``--dataset NAME``); see `tiny_r1v.data.offline`.
- The testbed of three small expert tasks with disjoint train/test sources (``--width W
  --height H`` set every image's exact size; docs/testbed.md): ``tb-math`` (math: an
  expression of 2-3 handwritten scikit-learn digits with + - ×, default 112x56), ``tb-chart``
  (chart: questions on bar charts of vega_datasets' bundled stocks, seattle-weather and crimea
  tables, default 112x112), ``tb-ocr`` (ocr: a string of 3-6 handwritten digits, default
  112x56); see `tiny_r1v.data.testbed`.

``--limit N`` keeps N rows (drawn with ``--seed`` where the source has a fixed size); the output
is a deterministic function of the arguments.

An existing ``DIR/<split>.jsonl``, or an existing image with other bytes than the new one, stops
the conversion (exit status 2, naming the file) and leaves DIR as it was, unless
``--overwrite`` is given: then the split's rows and the images this conversion writes replace
the old ones, each renamed into place once the whole split is written (images of the old rows
that the new rows do not use stay). No output may be one of the ``--input`` files, flag or not.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tiny_r1v.data import offline, testbed
from tiny_r1v.data.hf_parquet import LAYOUTS, ConvertError, ParquetLayout, convert_parquet
from tiny_r1v.data.writer import DatasetWriter, OutputExistsError

Run = Callable[[DatasetWriter, argparse.Namespace], None]


@dataclass(frozen=True)
class OfflineKind:
    """An offline source: `convert(writer, *, split, limit, seed, **options)`."""

    help: str
    convert: Callable[..., None]
    options: dict[str, tuple[str | int, str]] = field(default_factory=dict)
    """The kind's own command-line options: name -> (default, help); an int default makes the
    option a positive integer."""


def _image_size(width: int, height: int) -> dict[str, tuple[str | int, str]]:
    """The ``--width`` and ``--height`` options of a kind whose images have a fixed size."""
    return {"width": (width, "image width in pixels"), "height": (height, "image height in pixels")}


_GLYPH_OPTIONS = {
    **_image_size(112, 56),
    "layout": ("centred", "centred (glyphs scaled to fit, centred) | cells (one glyph per height x height cell)"),
}


OFFLINE_KINDS: dict[str, OfflineKind] = {
    "easy-vqa": OfflineKind("easy-VQA shapes and colours (vqa)", offline.easy_vqa),
    "digits": OfflineKind("scikit-learn's handwritten digits: read one (ocr)", offline.digits),
    "digit-sum": OfflineKind("scikit-learn's handwritten digits: add two (math)", offline.digit_sum),
    "reasoning-gym": OfflineKind(
        "a reasoning-gym generator rendered as images (math)",
        offline.reasoning_gym,
        options={"dataset": ("basic_arithmetic", "generator name")},
    ),
    "tb-math": OfflineKind(
        "testbed: arithmetic on handwritten digits (math)",
        testbed.tb_math,
        options={
            **_GLYPH_OPTIONS,
            "operands": (",".join(map(str, testbed.MATH_OPERANDS)), "comma-separated digits per expression: 2, 3"),
            "rationale": (
                testbed.MATH_RATIONALES[0],
                "expression (7*3+2) | worked (7*3+2=23): what a row's rationale holds",
            ),
        },
    ),
    "tb-chart": OfflineKind(
        "testbed: questions on bar charts of vega_datasets tables (chart)",
        testbed.tb_chart,
        options={
            **_image_size(112, 112),
            "questions": (",".join(testbed.CHART_QUESTIONS), "comma-separated kinds: most, least, value, gap"),
        },
    ),
    "tb-ocr": OfflineKind(
        "testbed: transcribe handwritten digit strings (ocr)", testbed.tb_ocr, options=_GLYPH_OPTIONS
    ),
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser; each kind is a sub-command whose `run` default performs the conversion."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output directory")
    common.add_argument("--split", choices=("train", "test"), default="train")
    common.add_argument("--limit", type=_positive_int, help="number of rows (default: all)")
    common.add_argument("--seed", type=int, default=0, help="seed of row choice and generation")
    common.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing DIR/<split>.jsonl and the images this conversion writes",
    )

    parser = argparse.ArgumentParser(
        prog="python -m tiny_r1v.data.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    for kind, layout in LAYOUTS.items():
        sub = kinds.add_parser(kind, parents=[common], help=layout.description)
        sub.add_argument("--input", nargs="+", required=True, help="Parquet files of one split")
        sub.set_defaults(run=_parquet_run(layout))

    for kind, source in OFFLINE_KINDS.items():
        sub = kinds.add_parser(kind, parents=[common], help=source.help)
        sub.set_defaults(run=_offline_run(source))
        for name, (default, help_text) in source.options.items():
            kind_type = {"type": _positive_int} if isinstance(default, int) else {}
            sub.add_argument(f"--{name}", default=default, help=f"{help_text} (default: {default})", **kind_type)
    return parser


def _parquet_run(layout: ParquetLayout) -> Run:
    def run(writer: DatasetWriter, args: argparse.Namespace) -> None:
        convert_parquet(writer, layout, args.input, limit=args.limit, seed=args.seed)

    return run


def _offline_run(source: OfflineKind) -> Run:
    def run(writer: DatasetWriter, args: argparse.Namespace) -> None:
        options = {name: getattr(args, name) for name in source.options}
        source.convert(writer, split=args.split, limit=args.limit, seed=args.seed, **options)

    return run


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with DatasetWriter(
            args.out,
            split=args.split,
            prefix=args.kind,
            overwrite=args.overwrite,
            inputs=getattr(args, "input", ()),
        ) as writer:
            args.run(writer, args)
    except (ConvertError, OutputExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {writer.rows} rows to {writer.path}")


if __name__ == "__main__":
    main()
