"""The job spec (DESIGN.md section 3): every field validated at submit time."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from app.core.catalog import BUILTIN_DATASETS, BUILTIN_NAMES, SYNTHETIC
from app.core.strict import StrictModel
from app.core.strict import field_error as _at

Activation = Literal[
    "linear", "relu", "gelu", "tanh", "sigmoid", "elu", "selu", "silu", "leaky_relu", "softplus"
]
Padding = Literal["same", "valid"]
PositiveInt = Annotated[int, Field(ge=1)]


# The rules a model validator enforces between fields, said in the JSON Schema too so
# that the OpenAPI document refuses what the API refuses. A property given as
# {"type": "null"} must be absent or null.
ABSENT: JsonDict = {"type": "null"}
SYNTHETIC_FIELDS = ("n_samples", "sample_shape", "num_classes")
MODEL_SOURCES: JsonDict = {"oneOf": [
    {"required": ["layers"], "properties": {"layers": {"type": "array"}, "preset": ABSENT}},
    {"required": ["preset"], "properties": {"preset": {"type": "string"}, "layers": ABSENT}},
]}
DATASET_SOURCES: JsonDict = {"oneOf": [
    {"required": ["id"], "properties": {"id": {"type": "string"}, "builtin": ABSENT,
                                        **dict.fromkeys(SYNTHETIC_FIELDS, ABSENT)}},
    {"required": ["builtin"],
     "properties": {"builtin": {"enum": list(BUILTIN_DATASETS)}, "id": ABSENT,
                    **dict.fromkeys(SYNTHETIC_FIELDS, ABSENT)}},
    {"required": ["builtin", *SYNTHETIC_FIELDS],
     "properties": {"builtin": {"const": SYNTHETIC}, "id": ABSENT,
                    "n_samples": {"type": "integer"}, "sample_shape": {"type": "array"},
                    "num_classes": {"type": "integer"}}},
]}


def _pair(value: int | list[int]) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    return value


class DenseLayer(StrictModel):
    type: Literal["dense"]
    units: PositiveInt
    activation: Activation = "linear"
    use_bias: bool = True


class Conv2DLayer(StrictModel):
    type: Literal["conv2d"]
    filters: PositiveInt
    kernel_size: PositiveInt | Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = 3
    strides: PositiveInt | Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = 1
    padding: Padding = "same"
    activation: Activation = "linear"
    use_bias: bool = True

    @property
    def kernel(self) -> list[int]:
        return _pair(self.kernel_size)

    @property
    def stride(self) -> list[int]:
        return _pair(self.strides)


class PoolLayer(StrictModel):
    type: Literal["maxpool2d", "avgpool2d"]
    pool_size: PositiveInt | Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = 2
    strides: (PositiveInt | Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]
              | None) = None
    padding: Padding = "valid"

    @property
    def pool(self) -> list[int]:
        return _pair(self.pool_size)

    @property
    def stride(self) -> list[int]:
        return _pair(self.strides) if self.strides is not None else self.pool


class GlobalAvgPoolLayer(StrictModel):
    type: Literal["global_avgpool"]


class FlattenLayer(StrictModel):
    type: Literal["flatten"]


class DropoutLayer(StrictModel):
    type: Literal["dropout"]
    rate: float = Field(0.5, ge=0.0, lt=1.0)


class BatchNormLayer(StrictModel):
    type: Literal["batchnorm"]
    # Keras meaning: the share of the running statistics kept at each update.
    # PyTorch's momentum is 1 - this (see docs/frameworks.md).
    momentum: float = Field(0.9, gt=0.0, lt=1.0)
    epsilon: float = Field(1e-5, gt=0.0, le=0.1)


class ActivationLayer(StrictModel):
    type: Literal["activation"]
    activation: Activation


class ResidualLayer(StrictModel):
    """A basic residual block: two 3x3 conv-batchnorm pairs and a (projected) skip."""

    type: Literal["residual"]
    filters: PositiveInt
    strides: Literal[1, 2] = 1
    activation: Activation = "relu"


LayerSpec = Annotated[
    DenseLayer
    | Conv2DLayer
    | PoolLayer
    | GlobalAvgPoolLayer
    | FlattenLayer
    | DropoutLayer
    | BatchNormLayer
    | ActivationLayer
    | ResidualLayer,
    Field(discriminator="type"),
]

# The one list of presets: the spec, its error messages and the README (checked by a test).
Preset = Literal["mlp", "lenet5", "resnet8", "airbench"]
PRESETS: tuple[str, ...] = get_args(Preset)


def layer_tags() -> frozenset[str]:
    """Every layer `type` the LayerSpec union accepts, read from the union itself."""
    members = get_args(get_args(LayerSpec)[0])
    return frozenset(tag for layer in members
                     for tag in get_args(layer.model_fields["type"].annotation))


class ModelSpec(StrictModel):
    model_config = ConfigDict(json_schema_extra=MODEL_SOURCES)

    layers: list[LayerSpec] | None = Field(None, min_length=1)
    preset: Preset | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.layers is None) == (self.preset is None):
            raise ValueError("give exactly one of 'layers' (a list) or 'preset' (one of "
                             + ", ".join(PRESETS) + ")")
        return self


class DatasetSpec(StrictModel):
    model_config = ConfigDict(json_schema_extra=DATASET_SOURCES)

    builtin: str | None = None
    id: str | None = Field(None, pattern=r"^ds_[A-Za-z0-9]+$")
    validation_split: float = Field(0.2, ge=0.0, lt=1.0)
    # synthetic only
    n_samples: int | None = Field(None, ge=10)
    sample_shape: list[PositiveInt] | None = Field(None, min_length=1, max_length=3)
    num_classes: int | None = Field(None, ge=2, le=1000)
    seed: int = Field(0, ge=0)

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, value: str | None) -> str | None:
        if value is not None and value not in BUILTIN_NAMES:
            raise ValueError(f"unknown builtin dataset {value!r}; choose one of "
                             + ", ".join(BUILTIN_NAMES))
        return value

    @field_validator("sample_shape")
    @classmethod
    def _vector_or_image(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(value) == 2:
            raise ValueError("sample_shape is a vector [D] or an image [H, W, C]")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.builtin is None) == (self.id is None):
            raise ValueError("give exactly one of 'builtin' (a dataset name) "
                             "or 'id' (an uploaded dataset)")
        synthetic_fields = {f for f in SYNTHETIC_FIELDS if getattr(self, f) is not None}
        if self.builtin == SYNTHETIC:
            missing = [f for f in SYNTHETIC_FIELDS if getattr(self, f) is None]
            if missing:
                raise ValueError("the synthetic dataset needs " + ", ".join(missing))
        elif synthetic_fields:
            raise ValueError(", ".join(sorted(synthetic_fields))
                             + " only apply to the synthetic dataset")
        return self

    @property
    def is_synthetic(self) -> bool:
        return self.builtin == SYNTHETIC


class OptimizerSpec(StrictModel):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False

    @model_validator(mode="after")
    def _sgd_only(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0.0):
            raise ValueError("nesterov needs the sgd optimizer with a momentum above 0")
        if self.momentum and self.name not in ("sgd", "rmsprop"):
            raise ValueError("momentum applies to sgd and rmsprop only")
        return self


class ScheduleSpec(StrictModel):
    name: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0.0)  # cosine floor
    step_size: int = Field(10, ge=1)  # step: epochs between decays
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step: decay factor


METRIC_NAMES = {"classification": ("accuracy",), "regression": ("mae", "mse")}
LOSS_NAMES = {"classification": ("cross_entropy",), "regression": ("mse", "mae", "huber")}


class EarlyStoppingSpec(StrictModel):
    monitor: str = "val_loss"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)
    mode: Literal["auto", "min", "max"] = "auto"
    restore_best: bool = False

    @property
    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "max" if self.monitor.removeprefix("val_") == "accuracy" else "min"


class TrainingSpec(StrictModel):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    lr_schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    loss: str | None = None
    metrics: list[str] | None = None
    early_stopping: EarlyStoppingSpec | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    compile: bool = False
    # Record the training loss, metrics and lr every N optimizer steps (the step series).
    log_every_steps: PositiveInt | None = Field(None, le=1_000_000)


class CheckpointSpec(StrictModel):
    every_epochs: PositiveInt = 1
    keep_last: PositiveInt = Field(2, le=100)


class ResourcesSpec(StrictModel):
    gpus: int = Field(0, ge=0, le=16)
    max_runtime_s: PositiveInt = 24 * 3600
    queue: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")


class JobSpec(StrictModel):
    name: str = Field("job", min_length=1, max_length=200)
    framework: Literal["pytorch", "keras"]
    task: Literal["classification", "regression"] = "classification"
    dataset: DatasetSpec
    model: ModelSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: int = Field(0, ge=-100, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        builtin = BUILTIN_DATASETS.get(self.dataset.builtin or "")
        if builtin is not None and builtin.task != self.task:
            raise _at(("task",), f"dataset {builtin.name!r} is a {builtin.task} dataset; "
                      f"set task to {builtin.task!r}")
        if self.dataset.is_synthetic and self.task != "classification":
            raise _at(("task",), "the synthetic dataset is for classification")
        training = self.training
        if training.loss is not None and training.loss not in LOSS_NAMES[self.task]:
            raise _at(("training", "loss"), f"unknown loss {training.loss!r} for {self.task}; "
                      "choose one of " + ", ".join(LOSS_NAMES[self.task]))
        for i, metric in enumerate(training.metrics or []):
            if metric not in METRIC_NAMES[self.task]:
                raise _at(("training", "metrics", i), f"unknown metric {metric!r} for "
                          f"{self.task}; choose from " + ", ".join(METRIC_NAMES[self.task]))
        if training.early_stopping is not None:
            monitor = training.early_stopping.monitor
            allowed = self.metric_names()
            choices = [*allowed, *(f"val_{m}" for m in allowed)]
            if monitor not in choices:
                raise _at(("training", "early_stopping", "monitor"),
                          f"cannot monitor {monitor!r}; choose one of " + ", ".join(choices))
            if monitor.startswith("val_") and self.dataset.validation_split == 0.0:
                raise _at(("training", "early_stopping", "monitor"),
                          f"{monitor!r} needs a validation split above 0")
        return self

    def loss_name(self) -> str:
        """The loss, defaulted by task."""
        return self.training.loss or LOSS_NAMES[self.task][0]

    def metric_names(self) -> list[str]:
        """The loss followed by the metrics reported each epoch (without the val_ prefix)."""
        metrics = self.training.metrics or [METRIC_NAMES[self.task][0]]
        return ["loss", *dict.fromkeys(metrics)]
