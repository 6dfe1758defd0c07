"""The fgcli command line: parses options, calls library functions, prints with rich.

Heavy imports (torch, onnxruntime) happen inside the commands, so `fgcli predict model.onnx`
runs on a device without PyTorch and `fgcli --help` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from typer.exceptions import TyperException

from fgcli.console import make_console, styled
from fgcli.errors import (EXTRA_OF_MODULE, INTERRUPTED_EXIT_CODE, TERMINATED_EXIT_CODE, FgcliError, Interrupted,
                          MissingDependencyError, Terminated, missing_module_of)
from fgcli.export.options import (DEFAULT_BATCH, DEFAULT_CALIB_SIZE, DEFAULT_VAL_SIZE, DEFAULT_WORKSPACE_GIB, MIN_OPSET,
                                  SENSITIVITY_CALIB_SIZE)
from fgcli.report.options import (BENCH_ITERATIONS, BENCH_MAX_BATCH, BENCH_WARMUP, DEFAULT_BATCH_SIZES, DEFAULT_CAM_IMAGES,
                                  DEFAULT_ITERATIONS, DEFAULT_WARMUP)

app = typer.Typer(
    help="Fine-grained visual classification: train, evaluate, export, quantize and deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset tools: generate the synthetic dataset, check a dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = make_console()  # results and data (--json)
err_console = make_console(stderr=True)  # errors, notes and progress displays


#: the largest --img-size / --resize-size accepted (FGVC uses 448; 2048 is already beyond any GPU batch)
MAX_IMG_SIZE = 2048
#: the smallest TensorRT --workspace, GiB (less leaves the builder no tactics)
MIN_WORKSPACE_GIB = 0.125
#: ``--batch`` default: the TensorRT profile MIN,OPT,MAX
BATCH_TEXT = ",".join(map(str, DEFAULT_BATCH))


def main() -> None:
    """Console-script entry point: every outcome becomes its exit status (0 ok, 1 errors found, 2 usage or
    input error, 130 interrupted) and FgcliError a clear message, not a traceback."""
    try:
        # standalone_mode=False: typer returns the code of a typer.Exit (and 130 for a Ctrl-C it caught)
        # instead of exiting; that code is the exit status
        code = app(standalone_mode=False)
    except FgcliError as exc:
        _exit_with(exc)
    except ImportError as exc:  # a module-level import outside optional_import (a deployment box may lack torch)
        missing = (missing_module_of(exc) or "").split(".")[0]
        if missing not in EXTRA_OF_MODULE:
            raise
        _exit_with(MissingDependencyError(missing, EXTRA_OF_MODULE[missing], "This command"))
    except KeyboardInterrupt:  # outside a command: typer turns a Ctrl-C inside one into the code 130
        code = INTERRUPTED_EXIT_CODE
    except typer.Abort:
        sys.exit(1)
    except TyperException as exc:  # usage errors (bad option values) carry their own message and exit code
        if not hasattr(exc, "show"):
            raise
        exc.show()
        sys.exit(exc.exit_code)
    if code == INTERRUPTED_EXIT_CODE:
        err_console.print(styled("[yellow]interrupted[/] (Ctrl-C)"), highlight=False)
    sys.exit(code if isinstance(code, int) else 0)


def _exit_with(exc: FgcliError) -> None:
    """Print an FgcliError (message, then hint) and exit with its status."""
    label = "[yellow]interrupted:[/]" if isinstance(exc, Interrupted) else "[bold red]error:[/]"
    err_console.print(styled(label + " {}", exc.message), highlight=False)
    if exc.hint:
        err_console.print(styled("[yellow]hint:[/] {}", exc.hint), highlight=False)
    sys.exit(exc.exit_code)


def _progress() -> Progress:
    """A progress display on stderr. Not on a terminal, rich draws it once, when it stops: one line per
    stage, never a redraw per step in a log."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, transient=False,
    )


@contextmanager
def _task(description: str, total: int | None) -> Iterator:
    """A one-bar progress display; yields ``advance(n)``."""
    with _progress() as progress:
        task = progress.add_task(description, total=total, info="")
        yield lambda n=1: progress.advance(task, n)


@contextmanager
def _status(description: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr whose text follows the steps; not on a terminal, one line per step (rich would
    print nothing of a transient spinner). Yields ``step(message)``."""
    if not err_console.is_terminal:
        err_console.print(description, markup=False, highlight=False)
        yield lambda message: err_console.print(message, markup=False, highlight=False)
        return
    with err_console.status(Text(description)) as status:  # a spinner reads a str as markup
        yield lambda message: status.update(Text(message))


# --------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset to (CUB-200-2011 layout)."),
    classes: int = typer.Option(10, "--classes", min=2, help="Number of classes."),
    per_class: int = typer.Option(40, "--per-class", min=2, help="Images per class (train + test)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same bytes."),
    test_fraction: float = typer.Option(0.3, "--test-fraction", min=0.05, max=0.95, help="Share of each class held out for test."),
) -> None:
    """Write a synthetic fine-grained dataset: one object shape, classes differ only in small part details."""
    from fgcli.data.synth import generate_synthetic

    with _task("generating", classes * per_class) as advance:
        summary = generate_synthetic(out, num_classes=classes, per_class=per_class, seed=seed,
                                     test_fraction=test_fraction, progress=advance)
    console.print(styled("wrote {} images of {} classes to [bold]{}[/] ({} train / {} test)", summary.num_images,
                         summary.num_classes, out, summary.num_train, summary.num_test))


@data_app.command("check")
def data_check(
    root: Path = typer.Argument(..., help="Dataset folder."),
    layout: str = typer.Option("auto", "--dataset", help="auto, cub, cars, aircraft or folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Count images per class and split; find unreadable, truncated, duplicate and tiny images.

    Exits with code 1 when it finds errors (unreadable or truncated files, missing annotations).
    """
    from fgcli.data.check import check_dataset

    with _task("checking", None) as advance:
        report = check_dataset(root, layout=layout, progress=advance)
    if json_out:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_check_report(report)
    if report.errors:
        raise typer.Exit(1)


def _print_check_report(report) -> None:
    console.print(report.summary)
    table = Table(title="images per class")
    table.add_column("class")
    splits = sorted({split for counts in report.counts.values() for split in counts})
    for split in splits:
        table.add_column(split, justify="right")
    for name, counts in report.counts.items():
        table.add_row(name, *[str(counts.get(split, 0)) for split in splits])
    console.print(table)
    for level, items, style in (("error", report.errors, "red"), ("warning", report.warnings, "yellow"),
                                ("info", report.infos, "cyan")):
        for item in items:
            console.print(styled(f"[{style}]{level}:[/] {{}}", item), highlight=False)
    console.print(f"{len(report.errors)} errors, {len(report.warnings)} warnings")


# --------------------------------------------------------------------------- train
@app.command()
def train(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Registry name: fgcli models lists them. Default baseline (with --qat: the --weights run's)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (CUB, Stanford Cars, FGVC-Aircraft or class folders)."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Run folder: last.pt, best.pt, metrics.jsonl."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="paper (the paper's settings) or small (CPU demo)."),
    dataset: str = typer.Option("auto", "--dataset", help="Layout: auto, cub, cars, aircraft, folder."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="torchvision resnet18, resnet34, resnet50, resnet101, or any timm CNN with stages at strides 4-32 (pip install 'fgcli\\[timm]'): efficientnet_b0, mobilenetv3_large_100, convnext_tiny, regnety_016, timm/resnet50 (timm's own ResNet)."),
    attention_backbone: Optional[str] = typer.Option(None, "--attention-backbone", help="TASN only: the attention net's backbone (default resnet18; same names as --backbone)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Start from ImageNet weights (downloads: torchvision's for its ResNets, timm's loader for timm backbones)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights from a local file: a torchvision ResNet state dict or a timm state dict (.pth / .safetensors) (the offline alternative to --pretrained) or an fgcli checkpoint, e.g. a baseline run's best.pt, to fine-tune a method from."),
    img_size: Optional[int] = typer.Option(None, "--img-size", min=32, max=MAX_IMG_SIZE, help="Crop size (divisible by 32). Default 448."),
    resize_size: Optional[int] = typer.Option(None, "--resize-size", min=32, max=MAX_IMG_SIZE, help="Shorter side before cropping. Default 512."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Per process."),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Learning rate of the new layers (> 0)."),
    backbone_lr_scale: Optional[float] = typer.Option(None, "--backbone-lr-scale", min=0.0, help="Backbone lr = lr x this (default 0.1; 0 freezes the backbone)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", min=0.0),
    warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", min=0),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine or step."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="DataLoader worker processes (0: load in the main process)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1."),
    amp: Optional[str] = typer.Option(None, "--amp", help="Autocast precision: bf16, fp16 or off. Default: bf16 on a GPU that has it, else fp16 (with loss scaling); off on the CPU. --resume keeps the run's unless given."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model for training: faster steps on a GPU after minutes of compiling."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly where OUT/last.pt stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start a new run in an OUT that holds one: its files are replaced when the new run finishes its first epoch, not before."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (and list them) instead of stopping."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard event files into OUT (loss terms, learning rates, accuracy, images/s; attention maps): tensorboard --logdir OUT. Needs pip install 'fgcli\\[tensorboard]'."),
    tensorboard_every: int = typer.Option(5, "--tensorboard-every", min=1, max=10000, help="Epochs between the attention-map images (the last epoch always has them)."),
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware training: fine-tune the fgcli checkpoint in --weights with INT8 quantizers (modelopt, pip install 'fgcli\\[quant]'). Takes its method, backbone and preprocessing; defaults: a tenth of its epochs at 1/100 of its lr. fgcli export then writes a Q/DQ model.qat.onnx that TensorRT builds as INT8."),
    qat_calib_size: int = typer.Option(256, "--qat-calib-size", min=1, max=1_000_000, help="With --qat: train images the quantizer ranges are calibrated on first."),
) -> None:
    """Train a method. Multi-GPU / multi-node: torchrun --nproc_per_node N -m fgcli train ...

    An OUT that holds a run is never trained into silently: --resume continues it, --overwrite replaces it. Two runs into one OUT at once are refused (OUT/.fgcli.lock names the running one). Ctrl-C saves OUT/interrupted.pt and exits with code 130.

    INT8 that keeps its accuracy: fgcli train --qat --weights RUN/best.pt --data DATA --out RUN-qat
    """
    from fgcli.training.config import resolve_config

    if attention_backbone and method != "tasn" and not (qat and method is None):  # --qat: the source decides
        raise FgcliError(f"--attention-backbone is a TASN option; {method or 'baseline'} has one backbone",
                         hint="drop --attention-backbone, or pass --method tasn")
    cfg = resolve_config({
        "method": method, "data": str(data), "out": str(out), "recipe": recipe, "layout": dataset,
        "backbone": backbone, "pretrained": pretrained, "weights": str(weights) if weights else None,
        "img_size": img_size, "resize_size": resize_size, "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "backbone_lr_scale": backbone_lr_scale, "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs, "schedule": schedule, "workers": workers, "device": device,
        "amp": amp, "compile": compile_model or None, "seed": seed, "resume": resume or None, "overwrite": overwrite or None,
        "skip_bad": skip_bad or None,
        "model_kwargs": {"attention_backbone": attention_backbone} if attention_backbone else None,
        "tensorboard": tensorboard or None, "tensorboard_every": tensorboard_every,
        "qat": qat or None, "qat_calib_size": qat_calib_size,
    }, note=_note if os.environ.get("RANK", "0") == "0" else lambda message: None)  # DDP: rank 0 speaks
    run_training(cfg)


def _note(message: str) -> None:
    """One line on stderr: something fgcli did that the user did not ask for (message: text, never markup)."""
    err_console.print(styled("[yellow]note:[/] {}", message), highlight=False)


def run_training(cfg):
    """Train with a rich progress display on rank 0; returns the TrainResult, raises Interrupted on Ctrl-C."""
    from fgcli.training.train import train as train_loop

    from fgcli.data import describe_layout

    is_main = os.environ.get("RANK", "0") == "0"
    if is_main:
        console.print(describe_layout(cfg.data, cfg.layout), highlight=False)
    if is_main and not cfg.pretrained and not cfg.weights and not cfg.resume:
        _note("training from scratch; FGVC methods expect ImageNet weights (--pretrained, or --weights FILE offline)")
    hook = _TrainDisplay() if is_main else None
    try:
        result = train_loop(cfg, hook)
    finally:
        if hook:
            hook.close()
    if is_main:
        if result.bad_images:
            console.print(styled("[yellow]skipped {} unreadable images:[/]", len(result.bad_images)))
            for path in result.bad_images:
                console.print(f"  {path}", highlight=False)
        if not result.interrupted:
            console.print(styled(f"best top-1 {result.best_top1:.4f}, last {result.last_top1:.4f}: [bold]{{}}[/]",
                                 result.out_dir / "best.pt"))
    code = TERMINATED_EXIT_CODE if result.terminated else INTERRUPTED_EXIT_CODE
    if result.interrupted and not is_main:  # rank 0 says what was saved
        raise typer.Exit(code)
    if result.interrupted:
        last = result.out_dir / "last.pt"
        raise Interrupted(("SIGTERM: " if result.terminated else "") +
                          f"weights so far in {result.out_dir / 'interrupted.pt'}",
                          hint=f"--resume continues from {last}" if last.is_file()
                          else "no epoch finished: the same command starts a new run there", exit_code=code)
    return result


class _TrainDisplay:
    """Turns training-loop events into a rich progress bar and one summary line per epoch."""

    def __init__(self):
        self.progress = _progress()
        self.progress.start()
        self.task = None

    def __call__(self, event: str, payload: dict) -> None:
        if event == "note":
            _note(payload["message"])
        elif event == "epoch_start":
            self._reset(f"epoch {payload['epoch'] + 1}/{payload['epochs']}", payload["steps"])
        elif event == "step" and not payload:  # between the loop's read-backs of its figures
            self.progress.update(self.task, advance=1)
        elif event == "step":
            terms = "".join(f" {name} {value:.3g}" for name, value in payload["terms"].items())
            info = (f"loss {payload['loss']:.3f}{terms} acc {payload['acc']:.3f} "
                    f"{payload['images_per_s']:.0f} img/s lr {payload['lr']:.2g}")
            self.progress.update(self.task, advance=1, info=info)
        elif event == "eval_start":
            self._reset("validating", payload["steps"])
        elif event == "eval_step":
            self.progress.advance(self.task)
        elif event == "epoch_end":
            terms = " ".join(f"{k[6:]}={v:.3f}" for k, v in payload.items()
                             if k.startswith("train_") and k not in ("train_loss", "train_acc"))
            console.print(
                f"epoch {payload['epoch']}: loss {payload['train_loss']:.3f} ({terms}) "
                f"train acc {payload['train_acc']:.3f} val top-1 {payload['val_top1']:.3f} "
                f"top-5 {payload['val_top5']:.3f} ({payload['images_per_s']:.0f} img/s)", highlight=False)

    def _reset(self, description: str, total: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, info="")

    def close(self) -> None:
        self.progress.stop()


# --------------------------------------------------------------------------- eval / predict
@app.command("eval")
def evaluate(
    model: Path = typer.Argument(..., help="A .pt checkpoint, .onnx model or .engine file."),
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    split: str = typer.Option("test", "--split", help="train, test (val, trainval for Aircraft)."),
    dataset: str = typer.Option("auto", "--dataset", help="Layout: auto, cub, cars, aircraft, folder."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON object (top1, top5, per-class, confusion)."),
) -> None:
    """Top-1, top-5, per-class accuracy and confusion matrix of a model on a dataset split."""
    from fgcli.data import load_split
    from fgcli.training.evaluate import evaluate_runner
    from fgcli.runtime import open_runner

    with open_runner(str(model), device=device) as runner:
        data_split = load_split(str(data), split=split, layout=dataset)
        with _task(f"evaluating {model.name}", len(data_split.samples)) as advance:
            result = evaluate_runner(runner, data_split, batch_size=batch_size, progress=advance,
                                     model_name=str(model))
    if json_out:
        print(json.dumps(result.to_dict()))
        return
    table = Table(title=f"{model.name} on {data} ({split}, {result.count} images, {result.runner})")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in zip(result.class_names, result.per_class):
        table.add_row(name, "-" if acc != acc else f"{acc:.3f}")
    console.print(table)
    for path, reason in result.bad_images.items():
        console.print(styled("[yellow]unreadable:[/] {}", reason), highlight=False)
    console.print(styled(f"top-1 [bold]{result.top1:.4f}[/]  top-5 [bold]{result.top5:.4f}[/]"))


@app.command()
def predict(
    model: Path = typer.Argument(..., help="A .pt checkpoint, .onnx model or .engine file."),
    folder: Path = typer.Argument(..., help="Folder of images (searched recursively) or one image."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", help="CSV: path, top-k classes and probabilities, error."),
    topk: int = typer.Option(5, "--topk", min=1, help="Classes per image (at most the model's class count)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda."),
    json_out: bool = typer.Option(False, "--json", help="Also print the predictions as JSON on stdout."),
) -> None:
    """Classify every image under FOLDER; unreadable files are listed, never fatal.

    Ctrl-C stops it with exit code 130 after writing the rows of the images already classified.
    """
    from fgcli.training.predict import find_images, iter_predictions, predictions_json, write_predictions_csv
    from fgcli.runtime import open_runner
    from fgcli.utils import check_output_file, sigint_deferred

    check_output_file(out)
    skipped: list[str] = []
    paths = find_images(folder, skipped)
    if skipped:
        named = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        _note(f"skipped {len(skipped)} files under {folder} that are not images PIL reads here: {named}")
    if not paths:
        raise FgcliError(f"no images found under {folder}", hint="supported: .jpg .jpeg .png .bmp .gif .tif .webp, "
                         "and any other format PIL identifies")
    predictions = []
    with open_runner(str(model), device=device) as runner:
        k = min(topk, len(runner.class_names))
        if k < topk:
            _note(f"--topk {topk} is more than the {k} classes of {model}: each row lists all {k}")
        try:
            with sigint_deferred() as interrupt, _task(f"predicting ({runner.name})", len(paths)) as advance:
                for batch in iter_predictions(runner, paths, topk=k, batch_size=batch_size, progress=advance):
                    predictions.extend(batch)
                    interrupt.check()  # Ctrl-C takes effect here, between batches
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
            terminated = isinstance(stop, Terminated)
            code, by = (TERMINATED_EXIT_CODE, "SIGTERM ") if terminated else (INTERRUPTED_EXIT_CODE, "")
            if not predictions:
                raise Interrupted(f"{by}after 0 of {len(paths)} images; nothing written (no {out})",
                                  exit_code=code) from None
            write_predictions_csv(out, predictions, k)
            raise Interrupted(f"{by}after {len(predictions)} of {len(paths)} images; their rows are in {out}",
                              hint="run it again for every image", exit_code=code) from None
    write_predictions_csv(out, predictions, k)
    failed = [p for p in predictions if p.error]
    if json_out:
        print(predictions_json(predictions))
    else:
        console.print(styled(f"{len(predictions) - len(failed)} images classified, {len(failed)} unreadable: "
                             "[bold]{}[/]", out))
        for p in failed:
            console.print(styled("[yellow]unreadable:[/] {}", p.error), highlight=False)


def _parse_batch(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise FgcliError(f"--batch '{text}' is not MIN,OPT,MAX", hint="e.g. --batch 1,8,32 (1 <= MIN <= OPT <= MAX)")
    return values


# --------------------------------------------------------------------------- deployment
@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A .pt checkpoint written by fgcli train."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: RUN/export beside the checkpoint)."),
    opset: int = typer.Option(MIN_OPSET, "--opset", min=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})."),
    img_size: Optional[int] = typer.Option(None, "--img-size", min=32, max=MAX_IMG_SIZE, help="Input size (default: the checkpoint's)."),
    batch: str = typer.Option(BATCH_TEXT, "--batch", help="TensorRT optimization profile MIN,OPT,MAX."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write model.fp16.onnx (strongly typed TensorRT builds)."),
    int8: bool = typer.Option(False, "--int8", help="INT8 post-training quantization (needs --calib-data)."),
    int8_backend: str = typer.Option("modelopt", "--int8-backend",
                                     help="modelopt (Q/DQ for TensorRT), ort (ONNX Runtime INT8 for CPU / ARM), or both."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Dataset whose train split calibrates INT8."),
    calib_size: int = typer.Option(DEFAULT_CALIB_SIZE, "--calib-size", min=1, help="Calibration images (class-balanced; warns below 300)."),
    calib_method: str = typer.Option("max", "--calib-method", help="max or entropy (ORT also: percentile)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset whose test images check ONNX parity (default: --calib-data, else generated)."),
    trt: bool = typer.Option(False, "--trt", help="Build a TensorRT engine (needs TensorRT on this machine)."),
    workspace: float = typer.Option(DEFAULT_WORKSPACE_GIB, "--workspace", min=MIN_WORKSPACE_GIB, help="TensorRT workspace limit, GiB."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", min=0, help="Build for a Jetson DLA core, with GPU fallback."),
    device: str = typer.Option("cpu", "--device", help="Where modelopt calibrates: cpu or cuda."),
    target_agreement: Optional[float] = typer.Option(None, "--target-agreement", min=0.0, max=1.0, help="With --int8, also write the mixed-precision model (model.int8-auto.onnx / model.ort-int8-auto.onnx): keep the nodes INT8 hurts most in float, one at a time, until this top-1 agreement with FP32 (e.g. 0.99) is met on the val / test split."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", min=0.0, max=100.0, help="With --int8: ... until top-1 is at most this many points below FP32 (e.g. 0.5); with --target-agreement both must hold."),
    val_size: int = typer.Option(DEFAULT_VAL_SIZE, "--val-size", min=1, max=100_000, help="Validation images the target is measured on (val, else test split; disjoint from calibration)."),
    min_speedup: Optional[float] = typer.Option(None, "--min-speedup", min=0.01, help="With a target: never keep a node float whose step takes the ONNX Runtime CPU speed-up over FP32 (batch 1, measured here) below this, e.g. 1.8; that node stays INT8 and the next is tried. Measure on the machine you deploy to."),
    auto_calib: bool = typer.Option(False, "--auto-calib", help="With a target: quantize fully with every calibration method (ONNX Runtime: minmax, entropy, percentile; modelopt: max, entropy) and start the float-node loop from the one closest to FP32 on the validation images (export.json lists each one's agreement); --calib-method still sets the plain INT8 model's."),
    embed_preprocess: bool = typer.Option(False, "--embed-preprocess", help="Put the mean / std normalisation into the ONNX graph: its input becomes RGB 0..255 float (what DeepStream feeds; needed there when the std differ per channel)."),
    deepstream: bool = typer.Option(False, "--deepstream", help="Also write DeepStream's nvinfer config config_infer_<name>.txt and labels_<name>.txt beside the model."),
    deepstream_mode: str = typer.Option("secondary", "--deepstream-mode", help="primary (whole frames) or secondary (objects found by an upstream detector)."),
    classifier_threshold: float = typer.Option(0.0, "--classifier-threshold", min=0.0, help="nvinfer's classifier-threshold; compared with the largest logit (the model has no softmax)."),
    deepstream_calib_cache: Optional[Path] = typer.Option(None, "--deepstream-calib-cache", help="Implicit INT8 in DeepStream: a TensorRT calibration cache (fgcli build --int8 --calib-data writes model.calib.cache) for the FP32 ONNX."),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Write a Triton model repository here: REPO/<name>/config.pbtxt, labels.txt, 1/model.onnx (1/model.plan with --trt)."),
) -> None:
    """Export a checkpoint: ONNX (checked against PyTorch), FP16, INT8, TensorRT engine, DeepStream / Triton configs."""
    from fgcli.export.pipeline import ExportOptions, export_all

    options = ExportOptions(
        out_dir=out or checkpoint.parent / "export", opset=opset, img_size=img_size, batch=_parse_batch(batch),
        fp16=fp16, int8=int8, int8_backend=int8_backend, calib_data=str(calib_data) if calib_data else None,
        calib_size=calib_size, calib_method=calib_method, check_data=str(data) if data else None, trt=trt,
        workspace_gib=workspace, dla_core=dla_core, device=device, target_agreement=target_agreement,
        max_drop=max_drop, val_size=val_size, min_speedup=min_speedup, auto_calib=auto_calib,
        embed_preprocess=embed_preprocess,
        deepstream=deepstream, deepstream_mode=deepstream_mode, deepstream_threshold=classifier_threshold,
        deepstream_calib_cache=str(deepstream_calib_cache) if deepstream_calib_cache else None,
        triton_repo=str(triton) if triton else None,
    )
    with _status("exporting") as step:
        summary = export_all(checkpoint, options, step=step)
    _print_export_summary(summary)


def _print_export_summary(summary) -> None:
    table = Table(title=f"artifacts in {summary.out_dir}")
    for column in ("artifact", "file", "check"):
        table.add_column(column)
    for key, info in summary.artifacts.items():
        path = info.get("path") or info.get("output_path")
        if "max_abs_diff" in info:
            rms = f"RMS |diff| {info['rms_diff']:.2e} against the fake-quantized model, " if info.get("metric") == "rms" else ""
            check = f"{rms}max |diff| {info['max_abs_diff']:.2e}, top-1 agreement {info['top1_agreement']:.3f} on {info['n_images']} images"
        elif "quantized_counts" in info:
            counts = ", ".join(f"{n} {op}" for op, n in sorted(info["quantized_counts"].items()))
            check = f"{info['calibration_images']} calibration images ({info['calib_method']}); quantized: {counts}"
            if "auto_precision" in info:
                choice = info["auto_precision"]
                check += f"; {len(choice['float_nodes'])} measured float nodes, agreement {choice['agreement']:.1%}"
        elif "images" in info:
            check = f"{info['images']} images"
        else:
            check = f"{info.get('build_path', '')} {info.get('tensorrt', '')}"
        table.add_row(key, Path(path).name if path else "-", check)
    console.print(table)
    for key, info in summary.artifacts.items():
        if "auto_precision" in info:
            _print_precision_steps(key, info["auto_precision"])
    for note in summary.notes:
        console.print(styled("[yellow]note:[/] {}", note), highlight=False)


def _print_precision_steps(key: str, choice: dict) -> None:
    """The accuracy / speed trade-off of automatic mixed precision, one row per node kept in float."""
    target = " and ".join(t for t in (f"agreement >= {choice['target_agreement']}" if choice["target_agreement"]
                                      is not None else "", f"top-1 drop <= {choice['max_drop']} points"
                                      if choice["max_drop"] is not None else "") if t)
    if choice["min_speedup"] is not None:
        target += f", CPU speed-up >= {choice['min_speedup']}x"
    # a line of text, not the table's title: rich wraps a title to the table's width, and logs keep it whole
    console.print(f"{key}: nodes kept in float until {target}" + ("" if choice["met"] else " (not met)"),
                  highlight=False)
    table = Table()
    for column in ("float nodes", "added", "agreement", "top-1", "KL", "CPU ms (batch 1)", "vs FP32"):
        table.add_column(column)
    for row in choice["steps"]:
        top1 = "-" if row["top1"] is None else f"{row['top1']:.1%}"
        added = (row["added"] or "(full INT8)") + (" (too slow: back to INT8)" if row["too_slow"] else "")
        table.add_row(str(row["float_nodes"]), added, f"{row['agreement']:.1%}", top1,
                      f"{row['kl']:.3g}", f"{row['latency_ms']:.2f}", f"{row['speedup']:.2f}x")
    console.print(table)


@app.command()
def build(
    onnx_model: Path = typer.Argument(..., help="An ONNX exported by fgcli export (copy it to the target first)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Engine path (default: model.<precision>.engine beside the ONNX)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 from an FP32 ONNX (builder flag; TensorRT < 11)."),
    int8: bool = typer.Option(False, "--int8", help="INT8: from a Q/DQ ONNX, or an FP32 ONNX with --calib-data / --calib-cache (TensorRT < 11)."),
    batch: str = typer.Option(BATCH_TEXT, "--batch", help="Optimization profile MIN,OPT,MAX."),
    workspace: float = typer.Option(DEFAULT_WORKSPACE_GIB, "--workspace", min=MIN_WORKSPACE_GIB, help="Workspace limit, GiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file, reused across builds."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", min=0, help="Jetson DLA core (fp16 / int8), with GPU fallback."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="calib.npz for the legacy INT8 calibrator."),
    calib_cache: Optional[Path] = typer.Option(None, "--calib-cache", help="Calibration cache written by an earlier build (no images needed)."),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT's verbose builder log."),
    backend: str = typer.Option("tensorrt", "--backend", help="tensorrt, or tensorrt-rtx (TensorRT for RTX: builds without a GPU, engines for RTX GPUs; pip install 'fgcli\\[rtx]')."),
) -> None:
    """Build a TensorRT engine on the target (Jetson flow: export on a workstation, build on the device)."""
    from fgcli.export.tensorrt import build_engine

    if fp16 and int8:
        raise FgcliError("choose one of --fp16 and --int8")
    precision = "int8" if int8 else "fp16" if fp16 else None
    with _status(f"building a TensorRT engine from {onnx_model.name} (minutes on a Jetson)"):
        info = build_engine(onnx_model, out_path=out, precision=precision, batch=_parse_batch(batch),
                            workspace_gib=workspace, timing_cache=timing_cache, dla_core=dla_core,
                            calib_cache=calib_cache, calib_data=calib_data, verbose=verbose, backend=backend)
    library = "TensorRT-RTX" if info.sidecar["backend"] == "tensorrt-rtx" else "TensorRT"
    console.print(styled("{} engine ({}, {} {}, {} s): [bold]{}[/] + {}", info.precision, info.build_path, library,
                         info.tensorrt_version, f"{info.build_seconds:.0f}", info.engine_path, info.sidecar_path.name))


@app.command()
def calib(
    model: Path = typer.Argument(..., help="The ONNX (or .pt) whose preprocessing the images get."),
    data: Path = typer.Option(..., "--data", help="Dataset; its --split is sampled class-balanced."),
    out: Path = typer.Option(Path("calib.npz"), "--out"),
    size: int = typer.Option(DEFAULT_CALIB_SIZE, "--size", min=1, help="Images (warns below 300)."),
    split: str = typer.Option("train", "--split"),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    """Write the INT8 calibration set calib.npz (for fgcli build --int8 --calib-data on the target)."""
    from fgcli.calibration.dataset import build_calibration_set
    from fgcli.runtime import open_runner
    from fgcli.utils import check_output_file

    check_output_file(out)
    with open_runner(str(model), device="cpu") as runner:
        preprocess = runner.preprocess
    with _progress() as progress:
        task = progress.add_task("preprocessing", total=size, info="")
        calibration = build_calibration_set(data, preprocess, size=size, seed=seed, split=split,
                                            progress=lambda done, total: progress.update(task, completed=done, total=total))
    path = calibration.save(out)
    for note in calibration.warnings:
        console.print(styled("[yellow]warning:[/] {}", note), highlight=False)
    console.print(styled(f"{len(calibration)} images: [bold]{{}}[/]", path))


@app.command()
def sensitivity(
    model: Path = typer.Argument(..., help="A .pt checkpoint, an export folder (its model.onnx) or an FP32 .onnx."),
    data: Path = typer.Option(..., "--data", help="Dataset: its train split calibrates, its val (else test) split validates."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: sensitivity/ beside the model)."),
    backend: str = typer.Option("ort", "--backend", help="ort (ONNX Runtime INT8 for CPU; calibrates once) or modelopt (Q/DQ for TensorRT; calibrates every model, slower)."),
    calib_size: int = typer.Option(SENSITIVITY_CALIB_SIZE, "--calib-size", min=1, max=100_000, help="Calibration images from the train split."),
    val_size: int = typer.Option(DEFAULT_VAL_SIZE, "--val-size", min=1, max=100_000, help="Validation images compared with FP32 (a few hundred suffice)."),
    top: int = typer.Option(20, "--top", min=1, max=1000, help="Nodes shown in the table and the plot."),
) -> None:
    """How much INT8 costs per node: each quantized alone, and each kept alone in float from full INT8.

    Ranked by KL(FP32 || INT8) on the validation images; writes sensitivity.json and sensitivity.png.
    `fgcli export --int8 --target-agreement 0.99` uses the same measurement to choose the nodes it keeps in float.
    """
    from fgcli.export.int8 import sensitivity_of
    from fgcli.report.plots import SENSITIVITY_PNG, plot_sensitivity

    out_dir = out or (model.parent if model.is_file() else model) / "sensitivity"
    with _progress() as progress:
        task = progress.add_task("INT8 per node (2 models each)", total=None, info="")
        result, record = sensitivity_of(model, data, out_dir, backend=backend, calib_size=calib_size,
                                        val_size=val_size,
                                       progress=lambda name, total: progress.update(task, advance=1, total=total,
                                                                                    info=name))
    _print_sensitivity(result, top)
    png = plot_sensitivity(result.to_dict(), out_dir / SENSITIVITY_PNG, top=top)
    console.print(styled("[bold]{}[/], [bold]{}[/]", record, png), highlight=False)


def _print_sensitivity(result, top: int) -> None:
    full = result.full_int8
    table = Table(title=f"INT8 sensitivity ({result.backend}; full INT8: agreement {full.agreement:.1%}, "
                        f"KL {full.kl:.3g}; {result.validation_images} validation images)")
    for column in ("rank", "node", "op", "alone: agreement", "alone: KL", "float: agreement", "recovered"):
        table.add_column(column)
    for rank, node in enumerate(result.nodes[:top], 1):
        alone = node.alone
        table.add_row(str(rank), node.name, node.op_type, "-" if alone is None else f"{alone.agreement:.1%}",
                      "-" if alone is None else f"{alone.kl:.3g}",
                      f"{node.kept_float.agreement:.1%}", f"{node.recovered_agreement:+.1%}")
    console.print(table)
    if result.constraint_float_nodes:
        console.print(f"kept float by the model's own rules (not measured): {', '.join(result.constraint_float_nodes)}",
                      highlight=False)


@app.command()
def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print JSON: {features: [...], environment: {...}}."),
    need: Optional[str] = typer.Option(None, "--need", help="Comma-separated features to check (train, export, qat, modelopt, ort-int8, trt, rtx, timm, tensorboard, plots, configs); exit status 1 when one is not ready."),
) -> None:
    """Which features run here (each checked by importing what it imports: ready, or what is missing and the
    command that fixes it), then Python, torch / CUDA, ONNX Runtime, modelopt, TensorRT, GPU, Jetson, DLA."""
    from dataclasses import asdict

    from fgcli.runtime.doctor import (FEATURE_NAMES, check_features, collect_environment, environment_table,
                                      feature_lines, parse_needed)

    checks = check_features(parse_needed(need) if need else FEATURE_NAMES)
    env = collect_environment()
    if json_out:
        print(json.dumps({"features": [asdict(check) for check in checks], "environment": env}, indent=2))
    else:
        for line in feature_lines(checks):
            console.print(line, highlight=False)
        console.print(environment_table(env))
    if need and not all(check.ready for check in checks):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- report
@app.command()
def report(
    sources: Optional[list[Path]] = typer.Argument(
        None, metavar="SOURCE", show_default=False,
        help="A .pt checkpoint, or an export folder (model.onnx, model.int8.onnx, ...: no PyTorch needed); "
             "with --compare, two or more report.json files."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset: --split is evaluated and timed on, the train split calibrates INT8."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/report beside the checkpoint, EXPORT_DIR/report for a folder, the current folder with --compare)."),
    formats: str = typer.Option("all", "--formats", help="all, a group (torch, onnx, trt) or comma-separated variant names, e.g. onnx-fp32,onnx-int8-ort,trt-int8; torch-fp16-compiled, torch-bf16-compiled (torch.compile), torch-fp16-graph, torch-bf16-graph (CUDA graphs) and torch-fp16-compiled-graph, torch-bf16-compiled-graph (both) only by name, e.g. all,torch-bf16-graph."),
    batch_sizes: str = typer.Option(",".join(map(str, DEFAULT_BATCH_SIZES)), "--batch-sizes", help="Throughput at each; the largest is also the evaluation batch and the TensorRT profile's maximum."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N: where PyTorch and TensorRT run (TensorRT and torch FP16 / BF16 need a GPU). ONNX Runtime uses the GPU when its CUDA provider is installed, else runs on the CPU and says so."),
    iterations: int = typer.Option(DEFAULT_ITERATIONS, "--iterations", min=1, help="Timed single-image calls per variant (p50 / p90 / p99); each larger batch runs iterations / batch calls, at least 3."),
    warmup: int = typer.Option(DEFAULT_WARMUP, "--warmup", min=0, help="Untimed calls per variant before each batch size is timed."),
    calib_size: int = typer.Option(DEFAULT_CALIB_SIZE, "--calib-size", min=1, help="INT8 calibration images from the train split of --data (warns below 300)."),
    split: str = typer.Option("test", "--split", help="The split every variant is evaluated on."),
    dataset: str = typer.Option("auto", "--dataset", help="Layout: auto, cub, cars, aircraft, folder."),
    cam_images: int = typer.Option(DEFAULT_CAM_IMAGES, "--cam-images", min=0, help="Test images drawn in OUT/report_cam.png: occlusion maps of FP32 next to every INT8 / FP16 variant (0: none)."),
    compare: bool = typer.Option(False, "--compare", help="Put report.json files from several machines or methods into one table and plot (compare.md / .json / .png)."),
    target_agreement: Optional[float] = typer.Option(None, "--target-agreement", min=0.0, max=1.0, help="Also report INT8 with measured mixed precision (onnx-int8-modelopt-auto, onnx-int8-ort-auto): nodes kept float until this agreement with FP32, e.g. 0.99 (as fgcli export --target-agreement)."),
    auto_calib: bool = typer.Option(False, "--auto-calib", help="With --target-agreement: calibrate the -auto variants with the method whose full INT8 is closest to FP32 (as fgcli export --auto-calib)."),
    qat: Optional[Path] = typer.Option(None, "--qat", help="Also report onnx-int8-qat: the Q/DQ ONNX of this QAT run (fgcli train --qat --weights SOURCE), next to SOURCE's post-training INT8. A QAT checkpoint given as SOURCE is reported against the FP32 run it came from."),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", min=0.001, help="The GPU's dense BF16 rate in TFLOP/s (datasheet) for the 'of limit' column; default: measured with a BF16 matrix product in this run."),
) -> None:
    """Accuracy and speed of every variant of a model on this machine, side by side, in one run.

    Variants: torch-fp32 (torch-fp16 / -bf16 on CUDA), onnx-fp32, onnx-int8-modelopt, onnx-int8-ort (with --target-agreement also their -auto mixed-precision variants, with --qat onnx-int8-qat), trt-fp32 / -fp16 / -int8. From a checkpoint, the files missing from OUT/export are exported first (never reused from another checkpoint). TensorRT engines are built on this machine. Variants that cannot run here are listed with the reason.

    Per variant: where it ran (device, provider), file size, top-1 / top-5, change and agreement against FP32, the classes that lost most, latency p50 / p90 / p99 at batch 1, throughput per batch size, on a GPU the fraction of the device's BF16 rate it reaches, build / calibration time. Torch FP16 / BF16 are the converted models (not autocast), channels_last on CUDA, timed on inputs already on the device. Timing is interleaved across variants, so the ratios to FP32 hold on a busy machine.

    Writes OUT/report.md (table), OUT/report.json (schema fgcli.report/1), OUT/report.png (plots) and OUT/report_cam.png (where FP32 and the quantized variants look, on a few test images).

    fgcli report runs/base/best.pt --data data/synth
    fgcli report runs/base/best.pt --data data/synth --target-agreement 0.99 --qat runs/base-qat/best.pt
    fgcli report export/ --data data/synth --device cuda      (a copied export folder, e.g. on a Jetson)
    fgcli report --compare ws/report.json orin/report.json --out compare/
    """
    if compare:
        _compare_reports(sources or [], out or Path("."))
        return
    if not sources or len(sources) != 1:
        raise FgcliError(f"fgcli report takes one checkpoint or export folder, got {len(sources or [])}",
                         hint="fgcli report RUN/best.pt --data DATASET; several report.json files go with --compare")
    if data is None:
        raise FgcliError("--data is missing: the dataset the variants are evaluated on",
                         hint=f"fgcli report {sources[0]} --data DATASET")
    source = sources[0]
    _report(source, data, out or (source.parent if source.is_file() else source) / "report", formats=formats,
            batch_sizes=batch_sizes, device=device, iterations=iterations, warmup=warmup, calib_size=calib_size,
            split=split, layout=dataset, cam_images=cam_images, target_agreement=target_agreement, qat=qat,
            auto_calib=auto_calib, peak_tflops=peak_tflops)


def _report(source: Path, data: Path, out_dir: Path, **options) -> dict:
    """Build and write a report with progress on screen, then print its table; returns the report."""
    from fgcli.report import ReportHooks, build_report, write_report
    from fgcli.report.plots import require_matplotlib
    from fgcli.report.render import rich_report_table

    require_matplotlib()  # fail now, not after minutes of measuring
    hooks = ReportHooks(step=lambda message: console.print(styled("[dim]{}[/]", message), highlight=False),
                        task=_task, planned=_print_variant_plan)
    result = build_report(source, data, out_dir, hooks=hooks, **options)
    paths = write_report(result, out_dir)
    console.print(rich_report_table(result))
    skipped = [variant["name"] for variant in result["variants"] if not variant["available"]]
    if skipped:  # the reasons were in the plan above and are in report.md
        console.print(styled("[yellow]not run here:[/] {} (reasons in report.md)", ", ".join(skipped)),
                      highlight=False)
    drawn = f", {result['attention']['png']}" if result["attention"] else ""
    console.print(styled("reference {}; wrote [bold]{}[/], {}, {}{}", result["reference"], paths["md"],
                         paths["json"].name, paths["png"].name, drawn))
    return result


def _print_variant_plan(variants) -> None:
    table = Table(title="variants")
    for column in ("variant", "file", "runs here"):
        table.add_column(column)
    for v in variants:
        table.add_row(v.name, v.path.name if v.path else "-", "yes" if v.available else f"no: {v.reason}")
    console.print(table)


def _compare_reports(paths: list[Path], out_dir: Path) -> None:
    from fgcli.report import compare_reports, write_comparison
    from fgcli.report.compare import rich_comparison_table

    comparison = compare_reports(paths)
    written = write_comparison(comparison, out_dir)
    console.print(rich_comparison_table(comparison))
    for note in comparison["notes"]:
        console.print(styled("[yellow]note:[/] {}", note), highlight=False)
    console.print(styled("wrote [bold]{}[/], {}, {}", written["md"], written["json"].name, written["png"].name))


@app.command()
def bench(
    source: Path = typer.Argument(..., metavar="MODEL", help="A .pt checkpoint (its torch variants), or one .onnx / .engine file."),
    formats: Optional[str] = typer.Option(None, "--formats", help="A checkpoint's torch variants (default: torch-fp32, torch-fp16, torch-bf16), e.g. torch-bf16,torch-bf16-compiled,torch-bf16-graph."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N. Torch FP16 / BF16, compiled and graph variants need a GPU."),
    max_batch: int = typer.Option(BENCH_MAX_BATCH, "--max-batch", min=1, help="The largest batch tried (doubling from 1); a batch that does not fit in memory ends that variant's sweep."),
    iterations: int = typer.Option(BENCH_ITERATIONS, "--iterations", min=1, help="Images' worth of timed calls per batch size (at least 3 calls)."),
    warmup: int = typer.Option(BENCH_WARMUP, "--warmup", min=0, help="Untimed calls per variant before each batch size."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: bench/ beside MODEL)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="The exported model.onnx whose FLOPs give the fraction of the GPU's limit (default: MODEL when it is .onnx, else RUN/export/model.onnx or RUN/report/export/model.onnx)."),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", min=0.001, help="The GPU's dense BF16 rate in TFLOP/s (datasheet); default: measured with a BF16 matrix product in this run."),
) -> None:
    """Throughput against batch size for each variant, up to the largest batch that fits; the knee marked.

    Writes OUT/bench.md (table), OUT/bench.json (schema fgcli.bench/1) and OUT/bench.png (images/s against batch, knee circled).

    fgcli bench runs/base/best.pt --device cuda --formats torch-fp32,torch-bf16,torch-bf16-compiled
    fgcli bench runs/base/export/model.int8.onnx --max-batch 64
    """
    from fgcli.report.bench import (
        bench_calls, bench_limit, bench_record, bench_table, counted_model, open_bench_runners, run_sweep,
        sweep_batches, write_bench,
    )
    from fgcli.report.plots import require_matplotlib
    from fgcli.report.render import rich_table

    require_matplotlib()
    batches = sweep_batches(max_batch)
    runners, refused = open_bench_runners(source, formats, device)
    for name, reason in refused:
        console.print(styled("[yellow]not run here:[/] {}: {}", name, reason), highlight=False)
    try:
        with _task("throughput by batch size", bench_calls(batches, iterations)) as advance:
            sweeps = run_sweep(runners, batches, iterations, warmup, progress=advance)
        img_size = next(iter(runners.values())).preprocess.img_size
    finally:
        for runner in runners.values():
            runner.close()
    limit = bench_limit(sweeps, counted_model(source, onnx), peak_tflops,
                        lambda message: console.print(styled("[dim]{}[/]", message), highlight=False))
    record = bench_record(source, device, sweeps, refused, batches, img_size, iterations, limit)
    paths = write_bench(record, out or source.parent / "bench")
    console.print(rich_table("images/s by batch size (* the knee)", *bench_table(record)))
    for sweep in sweeps:
        if sweep.stopped:
            console.print(styled("[yellow]{}:[/] {}", sweep.name, sweep.stopped), highlight=False)
    console.print(styled("wrote [bold]{}[/], {}, {}", paths["md"], paths["json"].name, paths["png"].name),
                  highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("fgcli-demo"), "--out", help="Where the dataset, runs and exports go."),
    method: str = typer.Option("baseline", "--method", "-m", help="A registry name, or 'all' for the six."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Default: the small recipe's."),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    """The whole pipeline on the synthetic dataset: generate, train, then fgcli report (export, quantize, evaluate and time every variant). With --method all, the reports of the six methods end in one comparison."""
    from fgcli.demo import DEMO_CLASSES, DEMO_PER_CLASS, DEMO_REPORT_OPTIONS, demo_config, ensure_synthetic
    from fgcli.models import list_models

    methods = list_models() if method == "all" else [method]
    data = out / "data"
    with _task("synthetic dataset", DEMO_CLASSES * DEMO_PER_CLASS) as advance:
        ensure_synthetic(data, DEMO_CLASSES, DEMO_PER_CLASS, progress=advance)
    reports = []
    for name in methods:
        console.rule(Text(name, style="bold"))
        cfg = demo_config(name, data, out, epochs=epochs, seed=seed)
        run_training(cfg)  # Ctrl-C raises Interrupted: it stops the demo, not only the epoch
        report_dir = Path(cfg.out) / "report"
        _report(Path(cfg.out) / "best.pt", data, report_dir, **DEMO_REPORT_OPTIONS)
        reports.append(report_dir / "report.json")
    if len(reports) > 1:
        console.rule(Text("all methods", style="bold"))
        _compare_reports(reports, out)
    console.print(styled("outputs: dataset [bold]{}[/], runs under [bold]{}[/] (best.pt, metrics.jsonl, "
                         "report/report.md, report.json, report.png, report/export/model*.onnx)", data, out / "runs"))


@app.command("cam")
def cam(
    checkpoint: Path = typer.Argument(..., metavar="CKPT", help="The .pt checkpoint written by fgcli train (RUN/best.pt)."),
    images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files and/or folders (a folder gives --limit "
                                                                      "images spread evenly over its sorted files, so several classes)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/cam beside the checkpoint)."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Classes (with probabilities) in each caption."),
    limit: int = typer.Option(8, "--limit", min=1, help="Images taken from each folder argument."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda."),
) -> None:
    """Where the model looks: per image a PNG with the input, the method's own attention maps and the Grad-CAM of its prediction, captioned with the top-k classes; plus OUT/cam_grid.png with one row per image.

    Each overlay is scaled to its own min-max (bright = high) and its raw range is printed under it, so a nearly flat mask is not mistaken for a sharp one. The caption is green when the top-1 class matches the image's folder name, red when not. TASN also shows its structure- and detail-sampled images.

    Needs the PyTorch checkpoint: exported .onnx / .engine models only give logits. Unreadable images are listed and skipped; the exit code is then 1.

    fgcli cam runs/base/best.pt data/synth/images --limit 6
    """
    from fgcli.report.cam import collect_images, require_checkpoint_path, write_cam_figures

    require_checkpoint_path(checkpoint)
    paths = collect_images(images, limit=limit)
    out_dir = out or checkpoint.parent / "cam"
    with _task("drawing attention maps", len(paths)) as advance:
        result = write_cam_figures(checkpoint, paths, out_dir, top_k=top_k, device=device, progress=advance)
    if top_k > result.num_classes:
        _note(f"--top-k {top_k} is more than the {result.num_classes} classes of {checkpoint}: each caption lists "
              f"all {result.num_classes}")
    if result.grid:
        console.print(styled(f"{len(result.figures)} figures in [bold]{{}}[/] (one per image), all images in "
                             "[bold]{}[/]", out_dir, result.grid))
    for reason in result.failed.values():
        console.print(styled("[yellow]unreadable:[/] {}", reason), highlight=False)
    if result.failed:
        raise typer.Exit(1)


@app.command("models")
def models_list() -> None:
    """List the registered methods."""
    from fgcli.models import list_models

    for name in list_models():
        console.print(name)


if __name__ == "__main__":
    main()
