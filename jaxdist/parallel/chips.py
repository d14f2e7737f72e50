"""Peak dense FLOP/s per chip, for MFU and the planner's default compute rate.

Keyed by a short name; `detect` maps `jax.devices()[0].device_kind` onto it. Figures are dense (no
2:4 sparsity) per chip, as the vendors publish them. The float32 column is the rate a float32 matmul
or conv gets under JAX's default precision: TF32 tensor cores on A100/H100/H200 (XLA's default for
f32 dots there), one bf16 pass on TPUs (their default), so on TPUs it equals the bf16 figure.
A chip not listed (CPU, consumer GPUs, H100 PCIe/NVL, ...) has no entry: MFU is then left out rather
than guessed, and `config.report.peak_flops_per_s` supplies one.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bfloat16: float  # peak dense FLOP/s per chip
    float32: float


CHIPS = {c.name: c for c in (
    # NVIDIA A100 datasheet (A100 SXM4): BF16 tensor core 312 TFLOPS, TF32 156 TFLOPS, dense.
    Chip("a100", bfloat16=312e12, float32=156e12),
    # NVIDIA H100 datasheet, SXM5 column: BF16 1,979 and TF32 989 TFLOPS *with sparsity*; dense is half.
    Chip("h100", bfloat16=989.5e12, float32=494.5e12),
    # NVIDIA H200 datasheet (SXM): same tensor cores as H100 SXM (BF16 1,979 / TF32 989 sparse).
    Chip("h200", bfloat16=989.5e12, float32=494.5e12),
    # Google Cloud TPU docs, "TPU v4": 275 TFLOPS peak bf16 per chip.
    Chip("tpu_v4", bfloat16=275e12, float32=275e12),
    # Google Cloud TPU docs, "TPU v5e": 197 TFLOPS peak bf16 per chip.
    Chip("tpu_v5e", bfloat16=197e12, float32=197e12),
    # Google Cloud TPU docs, "TPU v5p": 459 TFLOPS peak bf16 per chip.
    Chip("tpu_v5p", bfloat16=459e12, float32=459e12),
)}


def detect(device_kind: str) -> Chip | None:
    """The table's chip for a jax device_kind (e.g. 'NVIDIA H100 80GB HBM3', 'TPU v5 lite'), or None.

    PCIe and NVL variants of H100/H200 have lower clocks and power, so they are not matched to the SXM
    figures; A100's PCIe and SXM peaks are the same on the datasheet.
    """
    kind = device_kind.strip()
    tpus = {"TPU v4": "tpu_v4", "TPU v5 lite": "tpu_v5e", "TPU v5e": "tpu_v5e", "TPU v5": "tpu_v5p", "TPU v5p": "tpu_v5p"}
    if kind in tpus:
        return CHIPS[tpus[kind]]
    if kind.startswith("NVIDIA A100"):
        return CHIPS["a100"]
    for name in ("h100", "h200"):
        if kind.startswith(f"NVIDIA {name.upper()}") and not any(v in kind for v in ("PCIe", "NVL")):
            return CHIPS[name]
    return None


def peak_flops_per_s(chip: Chip, dtype: str) -> float:
    return chip.bfloat16 if dtype == "bfloat16" else chip.float32
