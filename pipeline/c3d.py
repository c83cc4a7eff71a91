"""The C3D network, its input preprocessing and strict loading of the Sports-1M weights (DESIGN.md section 4).

Preprocessing contract: RGB uint8 frames already resized to 128x171 -> centre crop 112x112 (rows 8..119,
columns 29..140) -> float32 -> subtract the Sports-1M mean (R, G, B) = (101.41, 97.66, 90.25) -> channels
reordered to BGR -> layout ``(N, 3, 16, 112, 112)``. No division by a standard deviation.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from drn.errors import InputError
from drn.store import StoreMetadata

COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # what C3D computes in (the store's dtype is apart)
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512-BF16 / AMX-BF16, Arm BF16 (/proc/cpuinfo)
CROP = 112
SPORTS1M_MEAN_RGB = (101.41, 97.66, 90.25)
LAYERS = ("fc6", "fc7")
FEATURE_DIM = 4096
EXTRACTOR_NAME = "c3d-sports1m"

_CONVS = (
    ("conv1", 3, 64),
    ("conv2", 64, 128),
    ("conv3a", 128, 256),
    ("conv3b", 256, 256),
    ("conv4a", 256, 512),
    ("conv4b", 512, 512),
    ("conv5a", 512, 512),
    ("conv5b", 512, 512),
)
_FCS = (("fc6", 8192, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 487))


class C3D(nn.Module):
    """C3D as in the Sports-1M port: eight 3x3x3 convolutions, five poolings, fc6 -> fc7 -> fc8."""

    def __init__(self) -> None:
        super().__init__()
        for name, cin, cout in _CONVS:
            setattr(self, name, nn.Conv3d(cin, cout, kernel_size=3, padding=1))
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1))
        for name, cin, cout in _FCS:
            setattr(self, name, nn.Linear(cin, cout))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, layer: str = "fc6") -> torch.Tensor:
        """``x`` is ``(N, 3, 16, 112, 112)``; returns ReLU(fc6), ReLU(fc7) or the fc8 logits."""
        r = self.relu
        x = self.pool1(r(self.conv1(x)))
        x = self.pool2(r(self.conv2(x)))
        x = self.pool3(r(self.conv3b(r(self.conv3a(x)))))
        x = self.pool4(r(self.conv4b(r(self.conv4a(x)))))
        x = self.pool5(r(self.conv5b(r(self.conv5a(x)))))
        x = r(self.fc6(x.flatten(1)))
        if layer == "fc6":
            return x
        x = r(self.fc7(x))
        return x if layer == "fc7" else self.fc8(x)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the Sports-1M state dict and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout in _CONVS:
        shapes[f"{name}.weight"] = (cout, cin, 3, 3, 3)
        shapes[f"{name}.bias"] = (cout,)
    for name, cin, cout in _FCS:
        shapes[f"{name}.weight"] = (cout, cin)
        shapes[f"{name}.bias"] = (cout,)
    return shapes


def check_state_dict(state: dict, source: str) -> dict[str, torch.Tensor]:
    """The state dict if it has every C3D key at its shape (fc8 may be absent); InputError naming the faults."""
    if not isinstance(state, dict):
        raise InputError(f"not a C3D state dict (a {type(state).__name__})", path=source)
    shapes = expected_shapes()
    missing = [k for k in shapes if k not in state and not k.startswith("fc8.")]
    unexpected = [k for k in state if k not in shapes]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {shapes[k]})"
        for k in shapes
        if k in state and tuple(getattr(state[k], "shape", ())) != shapes[k]
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if misshaped:
        problems.append("misshaped: " + ", ".join(misshaped))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(sorted(unexpected)))
    if problems:
        raise InputError("not the C3D Sports-1M state dict; " + "; ".join(problems), path=source)
    return {k: torch.as_tensor(v) for k, v in state.items()}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_c3d_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """Read and check ``c3d.pickle`` (a PyTorch state dict); returns it with the file's sha256."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise InputError("C3D weights file not found", path=source)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"cannot read C3D weights ({type(error).__name__}: {error})", path=source) from error
    return check_state_dict(state, source), file_sha256(source)


def random_weights_id(seed: int) -> str:
    return f"random-seed{seed}"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on Arm); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512-BF16, AMX-BF16 or Arm BF16): torch's own check where
    it has one, else the CPU flags."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        if any(check() for check in checks if check is not None):
            return True
    except Exception:  # a private torch API that changed: fall back on the flags
        pass
    return bool(cpu_flags() & set(CPU_BF16_FLAGS))


def resolve_compute_dtype(requested: str, device: str | torch.device = "cpu") -> str:
    """The dtype C3D computes in on ``device``: ``requested``, or for ``auto`` bfloat16 where the CPU or the GPU
    does it natively (an AVX-512-BF16/AMX CPU, a CUDA GPU of compute capability 8.0 or more), float16 on older
    CUDA GPUs, else float32."""
    if requested not in COMPUTE_DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(COMPUTE_DTYPES)}, not {requested!r}")
    if requested != "auto":
        return requested
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


@dataclass(frozen=True)
class C3DConfig:
    """How to run C3D: weights (a path or ``random``), layer, the stored dtype (``dtype``) and the dtype the
    network computes in (``compute_dtype``, ``auto`` until resolved on the device), seed for random weights."""

    weights: str
    layer: str = "fc6"
    dtype: str = "float16"
    seed: int = 0
    fps: str = "native"
    clip_len: int = 16
    clip_stride: int = 8
    compute_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise InputError(f"--layer must be one of {LAYERS}, not {self.layer!r}")
        if self.dtype not in ("float16", "float32"):
            raise InputError(f"--store-dtype must be float16 or float32, not {self.dtype!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(COMPUTE_DTYPES)}, not {self.compute_dtype!r}")


def store_metadata(config: C3DConfig, weights_sha256: str) -> StoreMetadata:
    """The store's metadata; ``config.compute_dtype`` should be resolved (not ``auto``) by then."""
    return StoreMetadata(
        extractor=EXTRACTOR_NAME,
        layer=config.layer,
        weights_sha256=weights_sha256,
        clip_len=config.clip_len,
        clip_stride=config.clip_stride,
        fps=config.fps,
        feature_dim=FEATURE_DIM,
        dtype=config.dtype,
        compute_dtype=config.compute_dtype,
    )


def center_crop(clips: np.ndarray, size: int = CROP) -> np.ndarray:
    """Centre ``size x size`` crop of ``[..., H, W, 3]`` frames (a view, no copy)."""
    height, width = clips.shape[-3], clips.shape[-2]
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the {size}x{size} crop")
    top, left = (height - size) // 2, (width - size) // 2
    return clips[..., top : top + size, left : left + size, :]


def normalize(clips: torch.Tensor | np.ndarray,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``[N, T, 112, 112, 3]`` RGB uint8 crops -> ``[N, 3, T, 112, 112]`` float32 BGR minus the Sports-1M mean, on
    the crops' device, in ``memory_format`` (channels-last keeps the crops' own order: no reordering pass)."""
    x = torch.as_tensor(clips).float()
    x = x - torch.tensor(SPORTS1M_MEAN_RGB, dtype=torch.float32, device=x.device)
    x = x.flip(-1)  # RGB -> BGR
    return x.permute(0, 4, 1, 2, 3).contiguous(memory_format=memory_format)


def preprocess(clips: np.ndarray) -> torch.Tensor:
    """``[N, 16, 128, 171, 3]`` RGB uint8 -> the network's input ``(N, 3, 16, 112, 112)`` (module docstring)."""
    return normalize(center_crop(np.asarray(clips)))


def build_c3d(weights: dict[str, torch.Tensor] | None, seed: int = 0) -> C3D:
    """C3D with the given (checked) state dict, or with seeded random weights when ``weights`` is None."""
    torch.manual_seed(seed)
    model = C3D()
    if weights is not None:
        result = model.load_state_dict(weights, strict=False)
        wrong = [k for k in result.missing_keys if not k.startswith("fc8.")] + list(result.unexpected_keys)
        if wrong:
            raise InputError("C3D weights do not fit the network: " + ", ".join(wrong))
    return model.eval()


class C3DFeatureExtractor:
    """Clip features from cropped uint8 clips, in batches, on CPU or GPU, computed in ``dtype`` (float32, or
    bfloat16/float16 autocast; ``auto`` resolves on the device, see ``resolve_compute_dtype``). Features come
    out as float32 whatever the compute dtype."""

    def __init__(
        self,
        model: C3D,
        *,
        layer: str = "fc6",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        channels_last: bool | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.layer = layer
        self.batch_size = max(1, batch_size)
        self.dtype = resolve_compute_dtype(dtype, self.device)
        self.autocast_dtype = None if self.dtype == "float32" else TORCH_DTYPES[self.dtype]
        if channels_last is None:  # oneDNN's bf16 3-D convolutions and cuDNN's are fastest channels-last
            channels_last = self.device.type == "cuda" or self.autocast_dtype is not None
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """``[N, 16, 112, 112, 3]`` uint8 RGB crops -> ``[N, 4096]`` float32 features."""
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            # uint8 to the device first (a quarter of the bytes of float32), normalised there
            batch = torch.as_tensor(np.ascontiguousarray(crops[start : start + self.batch_size])).to(self.device)
            x = normalize(batch, self.memory_format)
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    y = self.model(x, self.layer)
            else:
                y = self.model(x, self.layer)
            outputs.append(y.float().cpu().numpy())
        if not outputs:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(outputs)
