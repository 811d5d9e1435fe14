r"""A small regression MLP on California housing: CSV -> features -> train -> checkpoint.

    python -m trn_workloads.compile.housing_mlp train --csv housing.csv --output-dir /fsx/housing

writes `housing_mlp.pt` (checkpoint) and `example_input.pt` (rows for tracing); then

    python -m trn_workloads.compile --model housing-mlp --checkpoint /fsx/housing/housing_mlp.pt \
        --example-input /fsx/housing/example_input.pt --output-dir /fsx/housing/compiled

`python -m trn_workloads.compile.housing_mlp synth --output data.csv --rows 2000` writes a
CSV with the real columns and made-up values, for smoke runs without the dataset.

Feature encoding (11 inputs, the model's input size): the six size/count columns
housing_median_age, total_rooms, total_bedrooms, population, households, median_income,
followed by a one-hot of ocean_proximity over its five values. longitude/latitude are
left out: ocean_proximity carries the coarse location and keeps the input at 11.
Blank total_bedrooms cells (the public CSV has some) take the training column's median;
any other blank or non-numeric cell is an error naming the file, line and column.
The model standardises inputs itself (mean/std buffers from the training data), so the
served model takes the raw 11-value rows. Output: median_house_value in $100,000 units.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import math
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from trn_workloads.compile.manifest import write_atomic

log = logging.getLogger(__name__)

NUMERIC_COLUMNS = ("housing_median_age", "total_rooms", "total_bedrooms", "population", "households", "median_income")
IMPUTED_COLUMNS = ("total_bedrooms",)
OCEAN_PROXIMITY = ("<1H OCEAN", "INLAND", "ISLAND", "NEAR BAY", "NEAR OCEAN")
CATEGORY_COLUMN = "ocean_proximity"
TARGET_COLUMN = "median_house_value"
TARGET_SCALE = 100_000.0
FEATURE_NAMES = NUMERIC_COLUMNS + tuple(f"{CATEGORY_COLUMN}={v}" for v in OCEAN_PROXIMITY)
INPUT_FEATURES = len(FEATURE_NAMES)  # 11

CHECKPOINT_FORMAT = "housing-mlp/1"
CHECKPOINT_FILE = "housing_mlp.pt"
EXAMPLE_INPUT_FILE = "example_input.pt"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    csv: str
    output_dir: str
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    example_rows: int = 64  # rows saved for tracing; the compile batch size may not exceed it

    def __post_init__(self):
        for name in ("epochs", "batch_size", "example_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")


class HousingMLP(nn.Module):
    """11 -> 256 -> 128 -> 64 -> 1 with ReLU, dropout before the head, input standardisation built in."""

    def __init__(self):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(INPUT_FEATURES))
        self.register_buffer("feature_std", torch.ones(INPUT_FEATURES))
        self.layers = nn.Sequential(
            nn.Linear(INPUT_FEATURES, 256), nn.ReLU(),
            nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, 64), nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(64, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers((features - self.feature_mean) / self.feature_std)


# --- data -----------------------------------------------------------------------------

def load_csv(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a California-housing CSV into (features [N, 11], targets [N] in $100k)."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        required = NUMERIC_COLUMNS + (CATEGORY_COLUMN, TARGET_COLUMN)
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(missing)} (header has: {', '.join(header) or 'nothing'})")
        rows, targets = [], []
        for row in reader:
            line = reader.line_num
            values = [_number(row[c], path, line, c, blank_ok=c in IMPUTED_COLUMNS) for c in NUMERIC_COLUMNS]
            category = (row[CATEGORY_COLUMN] or "").strip()
            if category not in OCEAN_PROXIMITY:
                raise ValueError(
                    f"{path}:{line}: column {CATEGORY_COLUMN} is {category!r}, expected one of {', '.join(OCEAN_PROXIMITY)}"
                )
            values += [1.0 if category == v else 0.0 for v in OCEAN_PROXIMITY]
            rows.append(values)
            targets.append(_number(row[TARGET_COLUMN], path, line, TARGET_COLUMN, blank_ok=False) / TARGET_SCALE)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    features = torch.tensor(rows, dtype=torch.float32)
    for name in IMPUTED_COLUMNS:
        column = features[:, NUMERIC_COLUMNS.index(name)]
        blank = torch.isnan(column)
        if blank.all():
            raise ValueError(f"{path}: column {name} is blank in every row")
        column[blank] = column[~blank].median()
    return features, torch.tensor(targets, dtype=torch.float32)


def _number(cell: str | None, path: Path, line: int, column: str, *, blank_ok: bool) -> float:
    text = (cell or "").strip()
    if text == "" and blank_ok:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{path}:{line}: column {column} is {text!r}, expected a finite number")
    return value


def write_synthetic_csv(path: str | Path, rows: int, seed: int = 0) -> Path:
    """A CSV with the real column layout and made-up values, for smoke runs without the dataset.

    The target depends on income, age and location so that training has something to learn.
    """
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    income = 0.5 + 14.5 * rand(rows)
    age = (1 + 51 * rand(rows)).round()
    households = (50 + 1500 * rand(rows)).round()
    rooms = (households * (3 + 4 * rand(rows))).round()
    bedrooms = (rooms * (0.15 + 0.1 * rand(rows))).round()
    population = (households * (1.5 + 2.5 * rand(rows))).round()
    category = torch.randint(len(OCEAN_PROXIMITY), (rows,), generator=generator)
    location_bonus = torch.tensor([0.4, -0.6, 1.0, 0.6, 0.5])[category]
    value = (0.45 * income + 0.01 * age + location_bonus + 0.1 * torch.randn(rows, generator=generator)).clamp(0.15, 5.0)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["longitude", "latitude", *NUMERIC_COLUMNS, TARGET_COLUMN, CATEGORY_COLUMN])
    for i in range(rows):
        writer.writerow([
            f"{-124 + 10 * rand(1).item():.2f}", f"{32 + 10 * rand(1).item():.2f}",
            int(age[i]), int(rooms[i]), int(bedrooms[i]), int(population[i]), int(households[i]),
            f"{income[i].item():.4f}", f"{value[i].item() * TARGET_SCALE:.1f}", OCEAN_PROXIMITY[int(category[i])],
        ])
    write_atomic(path, buffer.getvalue().encode())
    return path


# --- training -------------------------------------------------------------------------

def train(config: TrainConfig) -> Path:
    """Train on the CSV and write the checkpoint and example input; returns the checkpoint path."""
    out = Path(config.output_dir)
    features, targets = load_csv(config.csv)  # all validation happens before anything is written
    torch.manual_seed(config.seed)

    model = HousingMLP()
    std = features.std(dim=0, unbiased=False)
    model.feature_mean.copy_(features.mean(dim=0))
    model.feature_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))  # constant columns pass through

    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.MSELoss()
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(features))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = loss_fn(model(features[batch]).squeeze(-1), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        log.info("epoch %d/%d train mse %.4f", epoch + 1, config.epochs, total / len(order))

    model.eval()
    with torch.no_grad():
        mse = loss_fn(model(features).squeeze(-1), targets).item()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": model.state_dict(),
        "feature_names": list(FEATURE_NAMES),
        "metrics": {"train_mse": mse, "rows": len(features), "epochs": config.epochs},
    }
    _save_atomic(checkpoint, out / CHECKPOINT_FILE)
    _save_atomic(features[: config.example_rows].clone(), out / EXAMPLE_INPUT_FILE)
    log.info("wrote %s and %s (train mse %.4f)", out / CHECKPOINT_FILE, out / EXAMPLE_INPUT_FILE, mse)
    return out / CHECKPOINT_FILE


def load_checkpoint(path: str | Path) -> HousingMLP:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: not a housing-mlp checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    if tuple(checkpoint.get("feature_names", ())) != FEATURE_NAMES:
        raise ValueError(f"{path}: feature_names differ from this code's encoding {list(FEATURE_NAMES)}")
    model = HousingMLP()
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def _save_atomic(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


# --- CLI ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trn_workloads.compile.housing_mlp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train on a CSV, write checkpoint + example input")
    p.add_argument("--csv", required=True, help="local/FSx path or s3:// URI of the CSV")
    p.add_argument("--output-dir", required=True)
    for field in dataclasses.fields(TrainConfig):
        if field.name not in ("csv", "output_dir"):
            p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    p = commands.add_parser("synth", help="write a synthetic CSV with the real columns (smoke runs)")
    p.add_argument("--output", required=True)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.command == "synth":
        if args.rows < 1:
            print(f"error: --rows must be >= 1, got {args.rows}", file=sys.stderr)
            return 2
        write_synthetic_csv(args.output, args.rows, args.seed)
        return 0
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**values)
        with tempfile.TemporaryDirectory(prefix="housing-data-") as scratch:
            if config.csv.startswith("s3://"):
                from trn_workloads import artifacts

                local = artifacts.download(config.csv, Path(scratch) / Path(config.csv).name)
                config = dataclasses.replace(config, csv=str(local))
            train(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
